"""Llama 4's RoPE: adjacent feature pairs (2i, 2i + 1) rotated by complex frequencies.

HF views each head as D/2 complex numbers and multiplies them by ``freqs_cis`` in fp32 (four
passes through q and k and two fp32 temporaries each way). It is the rotation of ``ops.rope`` with
another pairing, so it runs on that kernel with ``interleaved=True``: the frequencies are read as
their real view, (cos, sin) pairs, and each head is loaded whole and split into its pairs in
registers. One launch for q and k each way.
"""

import torch

from liger_kernel.ops.rope import LigerRopeFunction, check_rope_shapes, check_rope_tensors, rope_launch, save_launch
from liger_kernel.ops.utils import check_float, fallback_forward
from liger_kernel.utils import use_triton


def llama4_rope_reference(q, k, freqs_cis):
    """The spec: transformers' Llama 4 ``apply_rotary_emb``.

    q [B, T, Hq, D], k [B, T, Hk, D]; ``freqs_cis`` complex [B or 1, T, D/2] or [T, D/2]. Each pair
    (x[2i], x[2i+1]), read as x[2i] + i x[2i+1], is multiplied by ``freqs_cis[..., i]``, in fp32
    (fp64 for fp64 inputs); the results are cast back to q's and k's dtypes.
    """
    freqs = freqs_cis if freqs_cis.dim() == 3 else freqs_cis.unsqueeze(0)

    def rotate(x):
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        pairs = torch.view_as_complex(x.to(compute).contiguous().reshape(*x.shape[:-1], -1, 2))
        rotated = pairs * freqs.to(pairs.dtype)[:, :, None, :]
        return torch.view_as_real(rotated).flatten(3).to(x.dtype)

    return rotate(q), rotate(k)


def _cos_sin_pairs(q, k, freqs_cis) -> torch.Tensor:
    """The real view of ``freqs_cis`` as the kernel reads it, [.., T, D] (shapes checked)."""
    if not torch.is_tensor(freqs_cis) or not freqs_cis.is_complex():
        raise TypeError("`freqs_cis` must be a complex tensor (as Llama 4's rotary embedding returns).")
    for name, t in (("q", q), ("k", k)):
        check_float(name, t)
    pairs = torch.view_as_real(freqs_cis).flatten(-2)
    check_rope_tensors(q, k, pairs, pairs)
    check_rope_shapes(q.shape, k.shape, pairs.shape, pairs.shape, 2, None)
    if pairs.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"`freqs_cis` has {freqs_cis.shape[-1]} frequencies but the heads have {q.shape[-1]} features: "
            "it must have head_dim / 2."
        )
    return pairs


class LigerLlama4RopeFunction(LigerRopeFunction):
    """Llama 4 RoPE on q and k with one fused Triton launch each way; see ``llama4_rope_reference``.

    ``forward(q, k, freqs_cis, BLOCK_SIZE=None) -> (q_out, k_out)``, new tensors in q's and k's
    memory layouts. ``BLOCK_SIZE`` is accepted for the peer's signature; the launch settings
    follow from the shapes. ``freqs_cis`` gets no gradient. The backward is RoPE's.
    """

    @staticmethod
    def forward(ctx, q, k, freqs_cis, BLOCK_SIZE=None):
        pairs = _cos_sin_pairs(q, k, freqs_cis)
        ctx.use_triton = use_triton(q)
        if not ctx.use_triton:
            return fallback_forward(ctx, llama4_rope_reference, q, k, freqs_cis.detach())
        qo, ko, plan = rope_launch(q, k, pairs, pairs, 2, None, False, interleaved=True)
        save_launch(ctx, plan, pairs, pairs, 2, interleaved=True)
        return qo, ko


def llama4_rope_forward(q, k, freqs_cis, BLOCK_SIZE=None):
    """The peer's op helper: ``(q_embed, k_embed)``, Llama 4 RoPE of q and k without autograd."""
    pairs = _cos_sin_pairs(q, k, freqs_cis)
    if not use_triton(q):
        return llama4_rope_reference(q, k, freqs_cis)
    qo, ko, _ = rope_launch(q, k, pairs, pairs, 2, None, False, interleaved=True)
    return qo, ko
