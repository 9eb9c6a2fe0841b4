"""The fp32 weight gradient of a fused head, shared by the one-pass engines (distillation,
``fused_linear_logprobs_loss``): ``sum_k dlogits_k.T @ x_k`` accumulated in fp32 and rounded once.

For a 2-byte weight [V, H] the accumulator is two fp32 halves by vocabulary rows; the first
half's memory is exactly the size of the rounded gradient, so ``finish`` rounds in place there
(the second half's rows land in its upper part): the peak is the accumulator alone (2.1 GB at
V=128256, H=4096) rather than the accumulator + a 1 GB rounded copy.
"""

import torch

from liger_kernel.ops.fused_linear_cross_entropy import accumulate_mm, plain_on
from liger_kernel.ops.utils import cdiv

# Elements rounded at a time, through a temporary, before the in-place rounding of the weight
# gradient can proceed in doubling steps (8 MiB).
FIRST_ROUNDING_ELEMENTS = 2**21


class WeightGradAccumulator:
    """``sum_k dlogits_k.T @ x_k`` for a ``[V, H]`` weight in an fp32 accumulator, rounded once to the
    weight's dtype at the end. For 2-byte dtypes the accumulator is two fp32 halves of
    ``ceil(V / 2)`` and ``V - ceil(V / 2)`` rows: the first half's memory is exactly big enough for
    the whole rounded gradient, so ``finish`` writes it there (module docstring)."""

    def __init__(self, weight: torch.Tensor):
        n_vocab, hidden = weight.shape
        self.shape, self.dtype = (n_vocab, hidden), weight.dtype
        top = cdiv(n_vocab, 2) if weight.element_size() == 2 else n_vocab
        acc_dtype = torch.float32 if weight.element_size() == 2 else weight.dtype
        self.bounds = [(0, top), (top, n_vocab)] if top < n_vocab else [(0, n_vocab)]
        self.parts = [torch.empty(b - a, hidden, dtype=acc_dtype, device=weight.device) for a, b in self.bounds]
        self.empty = True  # nothing added yet: the first ``add`` writes the (uninitialized) parts

    def add(self, dlogits: torch.Tensor, x: torch.Tensor) -> None:
        """Adds ``dlogits.T @ x`` (``dlogits`` [k, V], ``x`` [k, H])."""
        for (a, b), part in zip(self.bounds, self.parts):
            accumulate_mm(part, dlogits[:, a:b].t(), x, self.empty)
        self.empty = False

    def finish(self, scale: torch.Tensor = None) -> torch.Tensor:
        """The gradient in the weight's dtype, times ``scale`` (a one-element fp32 tensor: the
        product rounded once, in the same pass as the rounding); zero when nothing was added; the
        accumulator is consumed."""
        if self.empty:
            for part in self.parts:
                part.zero_()
        parts, self.parts = self.parts, []
        if parts[0].dtype == self.dtype:
            return parts[0] if scale is None else parts[0].mul_(scale)
        n_vocab, hidden = self.shape
        first = parts[0].view(-1)
        out = first.view(self.dtype)  # 2 values of the weight's dtype per fp32 value
        _round_in_place(first, out, scale)
        if len(parts) > 1:
            _rounded_copy(parts[1].view(-1), out[first.numel() : n_vocab * hidden], scale)  # onto rounded fp32 rows
            del parts[1]
        return plain_on(out, self.dtype, (n_vocab, hidden))  # autograd may keep it as .grad


def _round_in_place(src: torch.Tensor, out: torch.Tensor, scale: torch.Tensor = None) -> None:
    """``out[:n] = src`` (times ``scale``) rounded, ``out`` being the 2-byte view of ``src``'s memory
    (n fp32 values): value i moves from byte 4i to byte 2i, so a range [a, b) with b <= 2a reads
    only bytes that are not yet written; the first range goes through a temporary, then the
    ranges double."""
    n = src.numel()
    end = min(n, FIRST_ROUNDING_ELEMENTS)
    out[:end].copy_((src[:end] if scale is None else src[:end] * scale).to(out.dtype))
    while end < n:
        start, end = end, min(n, 2 * end)
        _rounded_copy(src[start:end], out[start:end], scale)


def _rounded_copy(src: torch.Tensor, out: torch.Tensor, scale: torch.Tensor = None) -> None:
    """``out = src`` or ``out = src * scale``, computed in fp32 and rounded once to ``out``'s dtype."""
    if scale is None:
        out.copy_(src)
    else:
        torch.mul(src, scale, out=out)
