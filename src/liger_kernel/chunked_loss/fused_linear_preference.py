"""Paired preference losses (DPO, ORPO, CPO, SimPO) on per-token log-probabilities from the head.

Layout (as Liger Kernel 0.8.5): ``_input`` [2B, T, H] with the B chosen sequences first, then the
B rejected ones; ``target`` [2B, T]. Each loss is plain PyTorch on per-sequence log-probabilities
(summed, or averaged with ``average_log_prob``), which ``ops/fused_linear_logprobs.py`` gives
in at most the memory of one fp32 ``[V, H]`` weight-gradient buffer plus a chunk:

- Training (a gradient is wanted), where the batch's logits in the input dtype take no more
  memory than an fp32 ``[V, H]`` buffer (``whole_batch_fits``: N <= 2H tokens in bf16): the
  whole-batch route (``fused_linear_logprobs_batch_loss``): the batch's logits kept
  vocabulary-major, per-token log-probs, the subclass's ``preference_loss_fn`` on the whole
  batch, the head's gradients written over the logits (6NHV, no fp32 accumulator), for any loss,
  also one that couples the batch (DPO's ``bco_pair``: the batch's mean reward; it took the
  two-pass route before, 8NHV). ``WHOLE_BATCH_FOR_EVERY_LOSS = False`` keeps this route for the
  losses that couple the batch only.
- Otherwise (larger batches): one pass over chunks of whole pairs (chosen b and rejected b
  together, as many pairs as fit ``ONE_PASS_BUDGET_BYTES`` of logits, in the input dtype without
  a temperature: the spec's): each chunk's per-token log-probs, the subclass's
  ``preference_loss_fn`` on the chunk's pairs, and the head's gradients written at once (6NHV;
  an fp32 ``[V, H]`` weight-gradient accumulator, one accumulation per chunk over its gathered
  rows). Losses that couple the whole batch and a separate ``nll_target`` take the two-pass
  route instead: ``_compute_loss`` on the whole batch through the engine's autograd Function
  (8NHV, no ``[V, H]`` fp32 buffer). ``one_pass = False`` on a subclass selects that route
  always. A frozen reference head only runs forward (2NHV, no gradient; its logits computed as
  the policy's on each route, so that a reference equal to the policy gives rewards of exactly 0).
- At issue 12's DPO shape (4 pairs x 1024 tokens, H=4096, V=128256, bf16, a reference head) on
  an H200 (2026-11-29/30): one pass (a pair a chunk, bf16 logits) 62.3-66.4 ms / 2.694-2.728
  GB, ``bco_pair`` on two passes 75.35 ms / 2.236 GB; Liger 0.8.5 62.8-64.7 ms / 2.727 GB.
  Since then the pair index is built on the device (a host copy waited for the GPU once per
  chunk: ~8 ms idle) and a chunk's rows are gathered (8 accumulations of a 1 GB fp32 half
  instead of 16). Measured (H200, 2026-11-30, one run, ``benchmarks/bench_post_training.py
  --losses dpo --sweep``): whole-batch route 54.99 ms / 2.303 GB, every loss type 53.6-55.7 ms
  (``bco_pair`` 55.4); one-pass route (``ours-1pass``) 57.48 ms / 2.711 GB; Liger 0.8.5 62.38
  ms / 2.727 GB.
- No per-chunk ``torch.compile``, no chunk of one sample: ``compiled`` and ``chunk_size`` are
  accepted for compatibility and not needed.

Returns ``(loss, (chosen_logps [B], rejected_logps [B], chosen_logits_mean, rejected_logits_mean,
nll_loss, *aux))``, ``aux`` being what ``preference_loss_fn`` returns after the loss (DPO: the
chosen and rejected rewards [B]), as TRL indexes them. The logits means are over the non-ignored
tokens and the vocabulary (as TRL's own DPO reports them), computed without logits:
``mean_c(x @ W.T + b) = x . W.sum(0) / V + mean(b)``. ``nll_loss`` is the mean NLL of the chosen
tokens (0 unless ``compute_nll_loss``); the loss is ``preference_loss + alpha * nll_loss``.
A sequence with no target token has log-prob 0 (also averaged). The reference is a constant: no
gradient reaches ``ref_input`` / ``ref_weight`` / ``ref_bias``.
"""

from typing import NamedTuple

import torch

from liger_kernel.ops.cross_entropy import caller_grad_mode
from liger_kernel.ops.fused_linear_logprobs import (
    batch_frozen_logprobs,
    frozen_head_logprobs,
    fused_linear_logprobs,
    fused_linear_logprobs_batch_loss,
    fused_linear_logprobs_loss,
    one_pass_logits_dtype,
    one_pass_row_bytes,
    whole_batch_fits,
)
from liger_kernel.ops.utils import _apply_eagerly, _is_compiling, check_float

# Logits of one chunk of pairs on the one-pass route: one pair of 2 x 1024 tokens at V=128256 in
# bf16 (501 MiB); with the 2004 MiB fp32 weight-gradient accumulator, the 64 MiB input gradient and
# the pair's 16 MiB gathered input rows 2585 MiB = 2.71 GB at issue 12's DPO shape (Liger 0.8.5:
# 2.727 GB; two pairs a chunk: 3.29 GB). Read at call time.
ONE_PASS_BUDGET_BYTES = 512 * 2**20
# The whole-batch route (module docstring) for every loss where it fits, not only for those that
# couple the batch: the same flops as the one-pass route, without its fp32 accumulator's traffic
# (7 x 2.1 GB at issue 12's DPO shape) and in less memory. Read at call time.
WHOLE_BATCH_FOR_EVERY_LOSS = True


def check_sequences(_input, weight, target, bias, paired):
    """Errors naming the public arguments: ``input`` [S, T, H], ``target`` [S, T] (S even when
    ``paired``)."""
    check_float("input", _input)
    if _input.dim() != 3 or target.shape != _input.shape[:2]:
        raise ValueError(
            f"`input` must be [batch, seq_len, hidden] and `target` [batch, seq_len]; got {tuple(_input.shape)} "
            f"and {tuple(target.shape)}."
        )
    if paired and target.shape[0] % 2:
        raise ValueError(f"`input` holds chosen then rejected sequences: its batch ({target.shape[0]}) must be even.")


def sequence_logps(tok, mask, average):
    """Per-sequence log-probs from per-token ones ([S, T], 0 at ignored tokens): the sum, or the
    mean over the non-ignored tokens (0 for a sequence without any)."""
    total = tok.sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def logits_row_sums(x, weight, bias):
    """``(x @ W.T + b).sum(-1)`` per row of ``x`` [N, H] in fp32, without the logits (elementwise:
    autocast leaves it in fp32)."""
    sums = (x.float() * torch.sum(weight, 0, dtype=torch.float32)).sum(-1)
    return sums if bias is None else sums + bias.sum(dtype=torch.float32)


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum().clamp(min=1)


def reference_logps(
    use_ref_model, ref_input, ref_weight, ref_bias, target, ignore_index, average, logits_dtype=None, whole=False
):
    """Per-sequence log-probs of the frozen reference head ([S]), or None without one; its logits
    in ``logits_dtype``, the policy's (None: fp32, as on the two-pass route), computed as the
    whole-batch route computes the policy's when ``whole``."""
    if not use_ref_model:
        return None
    if ref_input is None or ref_weight is None:
        raise ValueError("`use_ref_model=True` needs `ref_input` and `ref_weight` (or pass use_ref_model=False).")
    check_float("ref_input", ref_input)
    ref_input, ref_weight, ref_bias = in_autocast_dtype(ref_input, ref_weight, ref_bias)
    if ref_input.shape[:2] != target.shape:
        raise ValueError(
            f"`ref_input` must be [{target.shape[0]}, {target.shape[1]}, hidden], got {tuple(ref_input.shape)}."
        )
    flat = ref_input.reshape(-1, ref_input.shape[-1])
    if whole:
        tok = batch_frozen_logprobs(flat, ref_weight, target.reshape(-1), ref_bias, ignore_index)
    else:
        tok = frozen_head_logprobs(flat, ref_weight, target.reshape(-1), ref_bias, 1.0, ignore_index, logits_dtype)
    return sequence_logps(tok.view(target.shape), target != ignore_index, average)


def wanted_grads(_input, weight, bias):
    """Which of input, weight, bias need a gradient (the caller's grad mode, recorded by ``apply``)."""
    on = caller_grad_mode.enabled
    return tuple(on and t is not None and t.requires_grad for t in (_input, weight, bias))


def autograd_grads(loss, leaves):
    """Gradients of ``loss`` for the leaves that require one (None elsewhere)."""
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    if not wanted or not loss.requires_grad:
        return [None if t is None or not t.requires_grad else torch.zeros_like(t) for t in leaves]
    found = iter(torch.autograd.grad(loss, wanted, allow_unused=True, materialize_grads=True))
    return [next(found) if t is not None and t.requires_grad else None for t in leaves]


def autograd_route(needs, _input, weight, bias, compute):
    """The two-pass route: ``compute(input, weight, bias) -> (loss, outputs)`` under autograd on
    detached leaves (the engine's Function inside); ``(loss, outputs, grads)``, all detached."""
    leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip((_input, weight, bias), needs)]
    with torch.enable_grad():
        loss, outputs = compute(*leaves)
    return loss.detach(), tuple(o.detach() for o in outputs), autograd_grads(loss, leaves)


def in_autocast_dtype(*tensors):
    """Under autocast the head runs in autocast's dtype, as ``F.linear`` would (hidden states in
    bf16 beside an fp32 ``lm_head``); ``save_grads`` returns each gradient in its tensor's dtype."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def save_grads(ctx, originals, grads):
    """Keep the gradients of ``originals`` (input, weight, bias) in their shapes and dtypes."""
    ctx.grads = tuple(None if g is None else g.view(t.shape).to(t.dtype) for g, t in zip(grads, originals))


def scaled_grads(ctx, grad_loss):
    """The saved gradients times the upstream gradient of the loss (freed from ``ctx``)."""
    grads, ctx.grads = ctx.grads, None
    if isinstance(grad_loss, tuple):  # backward(ctx, grad_output) called with the whole tuple
        grad_loss = grad_loss[0]
    return [None if g is None else g * grad_loss.to(g.dtype) for g in grads]


def pair_rows(n_pairs, seq_len, first, last):
    """Rows of pairs ``first .. last`` in the flattened [2B * T] layout: the chosen, then the
    rejected slice."""
    return [slice(first * seq_len, last * seq_len), slice((n_pairs + first) * seq_len, (n_pairs + last) * seq_len)]


def group_bounds(n_groups, rows_per_group, row_bytes, budget):
    """``(first, last)`` group ranges whose logits (``row_bytes`` a row) fit ``budget`` (at least
    one group each)."""
    per = max(1, int(budget // max(1, rows_per_group * row_bytes)))
    return [(first, min(first + per, n_groups)) for first in range(0, n_groups, per)]


class ChunkedLossFunction(torch.autograd.Function):
    """Records the caller's grad mode before each application (``forward`` always runs with grad
    off, and ``needs_input_grad`` ignores ``torch.no_grad()``); under ``torch.compile`` it runs
    eagerly, as one graph break (as every op's ``LigerFunction``)."""

    @classmethod
    def apply(cls, *args, **kwargs):
        if _is_compiling():
            return _apply_eagerly(cls, *args, **kwargs)
        caller_grad_mode.enabled = torch.is_grad_enabled()
        return super().apply(*args, **kwargs)


class LigerFusedLinearPreferenceBase(ChunkedLossFunction):
    """Base of the paired preference losses; subclasses define ``preference_loss_fn(chosen_logps,
    rejected_logps, full_target, [ref_chosen_logps, ref_rejected_logps,] beta, ...)`` returning
    the loss of the given pairs divided by the batch's pair count ``full_target.shape[0] // 2``
    (so that chunk losses add up), optionally followed by metrics, and call ``forward`` with
    ``cls``. See the module docstring."""

    one_pass = True

    @staticmethod
    def preference_loss_fn(*args, **kwargs):
        raise NotImplementedError("Subclasses of LigerFusedLinearPreferenceBase define preference_loss_fn.")

    @classmethod
    def couples_batch(cls, loss_kwargs) -> bool:
        """Whether the loss of a pair depends on other pairs (then no chunking)."""
        return False

    @staticmethod
    def forward(
        cls,
        ctx,
        _input,
        weight,
        target,
        bias=None,
        chunk_size=1,
        ignore_index=-100,
        alpha=1.0,
        beta=0.1,
        compute_nll_loss=True,
        nll_target=None,
        compiled=True,
        use_ref_model=False,
        ref_input=None,
        ref_weight=None,
        ref_bias=None,
        average_log_prob=True,
        **loss_kwargs,
    ):
        needs = wanted_grads(_input, weight, bias)  # first: the engine's calls below record their own grad mode
        originals = (_input, weight, bias)
        _input, weight, bias = in_autocast_dtype(_input, weight, bias)
        check_sequences(_input, weight, target, bias, paired=True)
        n_pairs, seq_len = target.shape[0] // 2, target.shape[1]
        x = _input.reshape(-1, _input.shape[-1])
        engine = any(needs) and cls.one_pass and nll_target is None
        couples = cls.couples_batch(loss_kwargs)
        whole = engine and (couples or WHOLE_BATCH_FOR_EVERY_LOSS) and whole_batch_fits(x, weight)
        one_pass = engine and not whole and not couples
        ref_seq = reference_logps(
            use_ref_model, ref_input, ref_weight, ref_bias, target, ignore_index, average_log_prob,
            one_pass_logits_dtype(_input, 1.0) if one_pass or whole else None, whole,
        )  # fmt: skip
        spec = PairSpec(
            cls.preference_loss_fn, target, target if nll_target is None else nll_target, ignore_index, alpha, beta,
            compute_nll_loss, use_ref_model, average_log_prob, loss_kwargs,
        )  # fmt: skip
        if whole:
            loss, tok, *grads = fused_linear_logprobs_batch_loss(
                x, weight, target.reshape(-1), bias,
                lambda tok: pair_head(tok.double().view(target.shape), target, ref_seq, spec)[0], ignore_index, needs,
            )  # fmt: skip
        elif one_pass:
            row_bytes = one_pass_row_bytes(x, weight, 1.0)
            bounds = group_bounds(n_pairs, 2 * seq_len, row_bytes, ONE_PASS_BUDGET_BYTES)

            def chunk_loss(k, tok):
                first, last = bounds[k]
                # Built on the device: a host tensor's copy would wait for the GPU once per chunk (the
                # H200 idled ~8 ms of a 62 ms DPO step on those waits).
                pairs = torch.arange(first, last, device=target.device)
                pairs = torch.cat([pairs, pairs + n_pairs])
                ref = None if ref_seq is None else ref_seq[pairs]
                # The head in float64 (a few values per pair): its own rounding, amplified by
                # exp-shaped losses (discopop), stays out of the gradient.
                return pair_head(tok.double().view(-1, seq_len), target[pairs], ref, spec)[0]

            chunks = [pair_rows(n_pairs, seq_len, first, last) for first, last in bounds]
            loss, tok, *grads = fused_linear_logprobs_loss(
                x, weight, target.reshape(-1), bias, chunks, chunk_loss, 1.0, ignore_index, needs
            )
        if whole or one_pass:
            with torch.no_grad():
                _, outputs = pair_head(tok.view(target.shape), target, ref_seq, spec)
                means = logits_means(x, weight, bias, target, ignore_index)
            outputs = (*outputs[:2], *means, *outputs[2:])
        else:
            chosen_nll_target = None if nll_target is None else chosen_half(nll_target, n_pairs)
            loss, outputs, grads = autograd_route(
                needs, _input, weight, bias,
                lambda x_, w_, b_: preference_compute_loss(x_, w_, target, b_, chosen_nll_target, ref_seq, spec),
            )  # fmt: skip
        save_grads(ctx, originals, grads)
        return loss, outputs

    @staticmethod
    def backward(ctx, *grad_output):
        grad_x, grad_w, grad_b = scaled_grads(ctx, grad_output[0])
        return grad_x, grad_w, None, grad_b, *[None] * 12

    @staticmethod
    def chunk_forward(
        input_chunk,
        weight,
        target_chunk,
        bias=None,
        ignore_index=-100,
        compute_nll_loss=True,
        chosen_nll_target_chunk=None,
        average_log_prob=True,
    ):
        """``(chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean,
        chosen_nll_loss)`` of a chunk of pairs (chosen half first), differentiable; the NLL is the
        sum over the chosen tokens (of ``chosen_nll_target_chunk`` when given), 0 without
        ``compute_nll_loss``."""
        n_pairs = target_chunk.shape[0] // 2
        x = input_chunk.reshape(-1, input_chunk.shape[-1])
        tok = fused_linear_logprobs(x, weight, target_chunk.reshape(-1), bias, 1.0, ignore_index)
        tok = tok.view(target_chunk.shape)
        seq = sequence_logps(tok, target_chunk != ignore_index, average_log_prob)
        nll_sum = chosen_nll_sum(x, weight, bias, tok, n_pairs, chosen_nll_target_chunk, ignore_index, compute_nll_loss)
        means = logits_means(x.detach(), weight.detach(), bias, target_chunk, ignore_index)
        return seq[:n_pairs], seq[n_pairs:], *means, nll_sum

    @staticmethod
    def _compute_loss(
        input_chunk,
        weight,
        target_chunk,
        bias=None,
        preference_loss_fn=None,
        full_target=None,
        ignore_index=-100,
        alpha=1.0,
        beta=0.1,
        compute_nll_loss=True,
        use_ref_model=False,
        ref_input_chunk=None,
        ref_weight=None,
        ref_bias=None,
        full_nll_target=None,
        chosen_nll_target_chunk=None,
        average_log_prob=True,
        **loss_kwargs,
    ):
        """``(loss, (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean,
        nll_loss, *aux))`` of a chunk of pairs, differentiable in the chunk's input and the head;
        the loss normalized by the whole batch (``full_target``, ``full_nll_target``)."""
        ref_seq = reference_logps(
            use_ref_model, ref_input_chunk, ref_weight, ref_bias, target_chunk, ignore_index, average_log_prob
        )
        spec = PairSpec(
            preference_loss_fn, full_target, full_target if full_nll_target is None else full_nll_target,
            ignore_index, alpha, beta, compute_nll_loss, use_ref_model, average_log_prob, loss_kwargs,
        )  # fmt: skip
        return preference_compute_loss(input_chunk, weight, target_chunk, bias, chosen_nll_target_chunk, ref_seq, spec)


def chosen_half(nll_target, n_pairs):
    """The chosen rows of ``nll_target`` ([2B, T] or [B, T])."""
    return nll_target[:n_pairs] if nll_target.shape[0] == 2 * n_pairs else nll_target


def chosen_nll_sum(x, weight, bias, tok, n_pairs, chosen_nll_target, ignore_index, compute_nll_loss):
    """Sum of the chosen tokens' NLL: from ``tok`` when the NLL's labels are the targets, else a
    separate pass of the engine on the chosen rows."""
    if not compute_nll_loss:
        return torch.zeros((), dtype=torch.float32, device=tok.device)
    if chosen_nll_target is None:
        return -tok[:n_pairs].sum()
    rows = chosen_nll_target.numel()
    return -fused_linear_logprobs(x[:rows], weight, chosen_nll_target.reshape(-1), bias, 1.0, ignore_index).sum()


@torch.no_grad()
def logits_means(x, weight, bias, target, ignore_index):
    """Mean logit of the chosen and of the rejected sequences' non-ignored tokens (fp32 scalars)."""
    n_pairs = target.shape[0] // 2
    means = (logits_row_sums(x, weight, bias) / weight.shape[0]).view(target.shape)
    mask = target != ignore_index
    return masked_mean(means[:n_pairs], mask[:n_pairs]), masked_mean(means[n_pairs:], mask[n_pairs:])


class PairSpec(NamedTuple):
    """What the loss of a chunk of pairs needs besides its log-probs (the batch's targets for the
    normalizers, and the options)."""

    preference_loss_fn: object
    full_target: torch.Tensor
    full_nll_target: torch.Tensor
    ignore_index: int
    alpha: float
    beta: float
    compute_nll_loss: bool
    use_ref_model: bool
    average_log_prob: bool
    loss_kwargs: dict


def pair_head(tok, target, ref_seq, spec: PairSpec):
    """The loss of pairs from their per-token log-probs ``tok`` [2b, T] (the NLL from them too):
    ``(loss, (chosen_logps, rejected_logps, nll_loss, *aux))``."""
    n_pairs = target.shape[0] // 2
    seq = sequence_logps(tok, target != spec.ignore_index, spec.average_log_prob)
    return combine(seq[:n_pairs], seq[n_pairs:], -tok[:n_pairs].sum(), ref_seq, spec)


def combine(chosen, rejected, nll_sum, ref_seq, spec: PairSpec):
    n_pairs = chosen.shape[0]
    ref = {}
    if spec.use_ref_model:
        ref = dict(ref_chosen_logps=ref_seq[:n_pairs], ref_rejected_logps=ref_seq[n_pairs:])
    out = spec.preference_loss_fn(chosen, rejected, spec.full_target, **ref, beta=spec.beta, **spec.loss_kwargs)
    pref, aux = (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, ())
    if spec.compute_nll_loss:
        chosen_targets = chosen_half(spec.full_nll_target, spec.full_target.shape[0] // 2)
        nll = nll_sum / (chosen_targets != spec.ignore_index).sum().clamp(min=1)
        loss = pref + spec.alpha * nll
    else:
        nll = torch.zeros((), dtype=torch.float32, device=chosen.device)
        loss = pref
    return loss, (chosen, rejected, nll, *aux)


def preference_compute_loss(input_chunk, weight, target_chunk, bias, chosen_nll_target_chunk, ref_seq, spec: PairSpec):
    """``_compute_loss`` given the chunk's reference log-probs (None without a reference)."""
    chosen, rejected, chosen_mean, rejected_mean, nll_sum = LigerFusedLinearPreferenceBase.chunk_forward(
        input_chunk, weight, target_chunk, bias, spec.ignore_index, spec.compute_nll_loss, chosen_nll_target_chunk,
        spec.average_log_prob,
    )  # fmt: skip
    loss, outputs = combine(chosen, rejected, nll_sum, ref_seq, spec)
    return loss, (*outputs[:2], chosen_mean, rejected_mean, *outputs[2:])
