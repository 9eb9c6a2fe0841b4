"""Rotary position embedding (RoPE) in Hugging Face's ``rotate_half`` layout, for q and k at once.

``out = x * cos + rotate_half(x) * sin`` over the first ``rotary_dim`` features of every head, the
rest passed through. One launch rotates q and k: a program owns a block of positions of one
sequence, loads cos/sin there once and reuses them for every head of q and of k. Backward is the
same kernel running the inverse rotation, so a step moves q and k four times (read + write in each
direction), the memory floor. Any strides with the features at unit stride are read in place:
Hugging Face's q and k are transposed views of the projections, and copying them first would add
two passes.
"""

import torch
import triton
import triton.language as tl

from liger_kernel.ops.utils import (
    LigerFunction,
    cdiv,
    check_float,
    check_same_device,
    check_same_dtype,
    empty_output,
    fallback_backward,
    fallback_forward,
    next_power_of_2,
)
from liger_kernel.utils import use_triton

# Elements of one half-tile (positions x heads x rotary_dim / 2) a program holds at once: 8 fp32
# values per thread and half with 4 warps. Swept on H100 (q[4,32,4096,128] k[4,8,4096,128] bf16,
# CUDA-graph GPU time of one direction): 1024 -> 92% (contiguous) / 94% (HF layout) of the
# 2-pass floor, 2048 -> 88% / 92%, 4096 -> 88% / 92%.
TILE = 1024
# Below this many programs, blocks of positions are split further to keep every SM busy.
MIN_PROGRAMS = 1024
NUM_WARPS = 4


@triton.jit
def _rotate_heads(
    x_ptr,
    o_ptr,
    stride_xb,
    stride_xh,
    stride_xt,
    stride_ob,
    stride_oh,
    stride_ot,
    b,
    t,
    t_mask,
    n_heads,
    c1,
    c2,
    s1,
    s2,
    HALF: tl.constexpr,
    PASS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HALF_PAD: tl.constexpr,
    PASS_PAD: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """Rotate every head of one tensor at positions ``t`` ([BLOCK_T, 1, 1]) of sequence ``b``
    (features at unit stride)."""
    d = tl.arange(0, HALF_PAD)[None, None, :]
    x_row = x_ptr + b * stride_xb + t * stride_xt
    o_row = o_ptr + b * stride_ob + t * stride_ot
    for h0 in range(0, n_heads, BLOCK_H):
        h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)[None, :, None]
        mask = t_mask & (h < n_heads)
        # The feature mask only where rotary_dim / 2 is not a power of two: a mask constant along
        # the features keeps the loads vectorized.
        mask_d = mask & (d < HALF) if HALF != HALF_PAD else mask
        x = x_row + h * stride_xh
        o = o_row + h * stride_oh
        x1 = tl.load(x + d, mask=mask_d, other=0.0).to(COMPUTE)
        x2 = tl.load(x + (d + HALF), mask=mask_d, other=0.0).to(COMPUTE)
        tl.store(o + d, (x1 * c1 - x2 * s1).to(o_ptr.dtype.element_ty), mask=mask_d)
        tl.store(o + (d + HALF), (x2 * c2 + x1 * s2).to(o_ptr.dtype.element_ty), mask=mask_d)
        if PASS > 0:
            p = 2 * HALF + tl.arange(0, PASS_PAD)[None, None, :]
            mask_p = mask & (p < 2 * HALF + PASS)
            tl.store(o + p, tl.load(x + p, mask=mask_p, other=0.0), mask=mask_p)


@triton.jit
def _rope_kernel(
    q_ptr,
    k_ptr,
    qo_ptr,
    ko_ptr,
    cos_ptr,
    sin_ptr,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    skt,
    sqob,
    sqoh,
    sqot,
    skob,
    skoh,
    skot,
    scb,
    sct,
    seq_len,
    n_q_heads,
    n_k_heads,
    HALF: tl.constexpr,
    PASS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    HALF_PAD: tl.constexpr,
    PASS_PAD: tl.constexpr,
    INVERSE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    # One flat grid axis over (sequence, block of positions): no 65535 limit on the batch. Every
    # feature dimension has unit stride, and cos and sin share their strides (fewer launch args).
    pid = tl.program_id(0)
    n_t_blocks = tl.cdiv(seq_len, BLOCK_T)
    b = (pid // n_t_blocks).to(tl.int64)
    t = ((pid % n_t_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None, None]
    t_mask = t < seq_len
    d = tl.arange(0, HALF_PAD)[None, None, :]
    mask_d = t_mask & (d < HALF)
    # cos/sin once per position, shared by all heads of q and k (stride_b is 0 when broadcast).
    c = cos_ptr + b * scb + t * sct
    s = sin_ptr + b * scb + t * sct
    c1 = tl.load(c + d, mask=mask_d, other=0.0).to(COMPUTE)
    c2 = tl.load(c + (d + HALF), mask=mask_d, other=0.0).to(COMPUTE)
    s1 = tl.load(s + d, mask=mask_d, other=0.0).to(COMPUTE)
    s2 = tl.load(s + (d + HALF), mask=mask_d, other=0.0).to(COMPUTE)
    if INVERSE:
        # The transpose of [[c1, -s1], [s2, c2]] is [[c1, s2], [-s1, c2]]: the forward with the
        # sine negated and its halves swapped (the same thing for HF's duplicated cos/sin halves).
        s1, s2 = -s2, -s1
    _rotate_heads(
        q_ptr, qo_ptr, sqb, sqh, sqt, sqob, sqoh, sqot, b, t, t_mask, n_q_heads, c1, c2, s1, s2,
        HALF, PASS, BLOCK_HQ, HALF_PAD, PASS_PAD, COMPUTE,
    )  # fmt: skip
    _rotate_heads(
        k_ptr, ko_ptr, skb, skh, skt, skob, skoh, skot, b, t, t_mask, n_k_heads, c1, c2, s1, s2,
        HALF, PASS, BLOCK_HK, HALF_PAD, PASS_PAD, COMPUTE,
    )  # fmt: skip


def _bhtd(x: torch.Tensor, unsqueeze_dim: int) -> torch.Tensor:
    """The [B, H, T, D] view of a q/k given as [B, H, T, D] (unsqueeze_dim=1) or [B, T, H, D] (2)."""
    return x if unsqueeze_dim == 1 else x.transpose(1, 2)


def _layout_order(x: torch.Tensor) -> list[int]:
    """``x``'s dimensions from outermost to innermost in memory, the feature dimension last."""
    return sorted(range(x.dim() - 1), key=lambda i: (-x.stride(i), -x.shape[i], i)) + [x.dim() - 1]


def _empty_in_order(shape, like: torch.Tensor, order: list[int]) -> torch.Tensor:
    """A dense output of ``shape`` whose dimensions lie in memory in ``order``.

    The outputs (and, in backward, the input gradients) take q's and k's memory order. HF's q and
    k are [B, T, H, D] projections viewed as [B, H, T, D]; an output in that same [B, T, H, D]
    memory order is what HF's eager RoPE returns, what flash and memory-efficient attention read
    natively, and what lets the gradient flow back through the transpose and the projection's
    ``view`` without a copy. Contiguous inputs get contiguous outputs.
    """
    if order == sorted(order):
        return empty_output(shape, like)
    strides, step = [0] * len(shape), 1
    for i in reversed(order):
        strides[i], step = step, step * shape[i]
    return empty_output(shape, like, strides=strides)


def _unit_feature_stride(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a contiguous copy when its last dimension is not at unit stride (rare: the kernel
    indexes features directly)."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _launch_settings(batch: int, seq_len: int, n_q_heads: int, half_pad: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_HQ cap, number of position blocks)."""
    block_h = max(1, min(next_power_of_2(n_q_heads), TILE // half_pad))
    block_t = max(1, min(TILE // (block_h * half_pad), next_power_of_2(seq_len), 64))
    while block_t > 1 and batch * cdiv(seq_len, block_t) < MIN_PROGRAMS:
        block_t //= 2
    return block_t, block_h, cdiv(seq_len, block_t)


def rope_launch(q, k, cos, sin, unsqueeze_dim: int, rotary_dim: int, inverse: bool, orders):
    """Rotate (``inverse=False``) or un-rotate q and k in one launch into new tensors whose memory
    orders are ``orders`` (one ``_layout_order`` for q, one for k)."""
    q4, k4 = _bhtd(_unit_feature_stride(q), unsqueeze_dim), _bhtd(_unit_feature_stride(k), unsqueeze_dim)
    qo, ko = _empty_in_order(q.shape, q, orders[0]), _empty_in_order(k.shape, k, orders[1])
    qo4, ko4 = _bhtd(qo, unsqueeze_dim), _bhtd(ko, unsqueeze_dim)
    if cos.dim() == 2:
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    cos, sin = _unit_feature_stride(cos), _unit_feature_stride(sin)
    if cos.stride() != sin.stride():  # the kernel takes one set of strides for both
        cos, sin = cos.contiguous(), sin.contiguous()
    batch, n_q_heads, seq_len, head_dim = q4.shape
    n_k_heads = k4.shape[1]
    if batch * seq_len == 0:
        return qo, ko
    half = rotary_dim // 2
    half_pad = next_power_of_2(half)
    pass_dims = head_dim - rotary_dim
    block_t, block_h, n_t_blocks = _launch_settings(batch, seq_len, n_q_heads, half_pad)
    block_hk = max(1, min(next_power_of_2(n_k_heads), block_h))
    sqb, sqh, sqt, _ = q4.stride()
    skb, skh, skt, _ = k4.stride()
    sqob, sqoh, sqot, _ = qo4.stride()
    skob, skoh, skot, _ = ko4.stride()
    _rope_kernel[(batch * n_t_blocks,)](
        q4, k4, qo4, ko4, cos, sin,
        sqb, sqh, sqt, skb, skh, skt, sqob, sqoh, sqot, skob, skoh, skot,
        0 if cos.shape[0] == 1 else cos.stride(0), cos.stride(1),  # batch stride 0: broadcast
        seq_len, n_q_heads, n_k_heads,
        HALF=half,
        PASS=pass_dims,
        BLOCK_T=block_t,
        BLOCK_HQ=block_h,
        BLOCK_HK=block_hk,
        HALF_PAD=half_pad,
        PASS_PAD=next_power_of_2(pass_dims) if pass_dims else 1,
        INVERSE=inverse,
        COMPUTE=tl.float64 if q.dtype == torch.float64 else tl.float32,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return qo, ko


def check_rope_inputs(q, k, cos, sin, unsqueeze_dim, rotary_dim) -> int:
    """Validate the arguments (errors name the argument); returns the rotary dimension."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_float(name, t)
    check_same_device(q=q, k=k, cos=cos, sin=sin)
    check_same_dtype(q=q, k=k)
    if unsqueeze_dim not in (1, 2):
        raise ValueError(f"`unsqueeze_dim` must be 1 (q, k as [B, H, T, D]) or 2 ([B, T, H, D]), got {unsqueeze_dim}.")
    for name, t in (("q", q), ("k", k)):
        if t.dim() != 4:
            raise ValueError(f"`{name}` must be 4-D ([B, H, T, D] or [B, T, H, D]), got shape {tuple(t.shape)}.")
    t_dim = 3 - unsqueeze_dim
    batch, seq_len, head_dim = q.shape[0], q.shape[t_dim], q.shape[-1]
    if k.shape[-1] != head_dim:
        raise ValueError(f"`k` has head_dim {k.shape[-1]} but `q` has {head_dim}: they must match.")
    if k.shape[0] != batch or k.shape[t_dim] != seq_len:
        raise ValueError(
            f"`k` has shape {tuple(k.shape)} but `q` has {tuple(q.shape)}: batch and sequence lengths must match."
        )
    if tuple(cos.shape) != tuple(sin.shape):
        raise ValueError(f"`sin` has shape {tuple(sin.shape)} but `cos` has {tuple(cos.shape)}: they must match.")
    if cos.dim() not in (2, 3) or cos.shape[-2] != seq_len or (cos.dim() == 3 and cos.shape[0] not in (1, batch)):
        raise ValueError(
            f"`cos` and `sin` must be [1, T, R], [B, T, R] or [T, R] with B={batch}, T={seq_len}; "
            f"got {tuple(cos.shape)}."
        )
    rotary_dim = cos.shape[-1] if rotary_dim is None else rotary_dim
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim or rotary_dim > cos.shape[-1]:
        raise ValueError(
            f"`rotary_dim` must be even, positive and at most head_dim ({head_dim}) and cos.shape[-1] "
            f"({cos.shape[-1]}); got {rotary_dim}."
        )
    return rotary_dim


def rope_reference(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """The spec: Hugging Face's ``apply_rotary_pos_emb`` (rotate_half layout), partial rotation included.

    q [B, Hq, T, D], k [B, Hk, T, D] (``unsqueeze_dim=1``) or [B, T, H, D] (``unsqueeze_dim=2``);
    cos, sin [1, T, R], [B, T, R] or [T, R] (treated as [1, T, R]). The first ``rotary_dim``
    (default R) features of each head are rotated with ``cos[..., :rotary_dim]``, the rest pass
    through. cos/sin are cast to q's dtype first, as HF's rotary embedding does, so the outputs
    keep q's dtype. ``position_ids`` is ignored, as in HF: cos/sin are already gathered per position.
    """
    if cos.dim() == 2:
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    r = cos.shape[-1] if rotary_dim is None else rotary_dim
    cos = cos[..., :r].to(q.dtype).unsqueeze(unsqueeze_dim)
    sin = sin[..., :r].to(q.dtype).unsqueeze(unsqueeze_dim)

    def rotate(x):
        x_rot, x_pass = x[..., :r], x[..., r:]
        x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2 :]
        return torch.cat((x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin, x_pass), dim=-1)

    return rotate(q), rotate(k)


class LigerRopeFunction(LigerFunction):
    """RoPE on q and k with one fused Triton launch each way; see ``rope_reference`` for the math.

    ``forward(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None) -> (q_out, k_out)``,
    new tensors in the memory layout of q and k. cos/sin may be of another float dtype than q
    (math in fp32); they get no gradient. ``position_ids`` is accepted and ignored, as in HF.
    """

    @staticmethod
    def forward(ctx, q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
        rotary_dim = check_rope_inputs(q, k, cos, sin, unsqueeze_dim, rotary_dim)
        ctx.use_triton = use_triton(q)
        if not ctx.use_triton:
            return fallback_forward(
                ctx, rope_reference, q, k, cos.detach(), sin.detach(), None, unsqueeze_dim, rotary_dim
            )
        ctx.unsqueeze_dim, ctx.rotary_dim = unsqueeze_dim, rotary_dim
        ctx.orders = (_layout_order(q), _layout_order(k))
        ctx.save_for_backward(cos, sin)
        return rope_launch(q, k, cos, sin, unsqueeze_dim, rotary_dim, False, ctx.orders)

    @staticmethod
    def backward(ctx, dq, dk):
        if not ctx.use_triton:
            return fallback_backward(ctx, dq, dk)
        cos, sin = ctx.saved_tensors
        # The gradients take q's and k's layouts, whatever the upstream ones (expanded, transposed).
        dq, dk = rope_launch(dq, dk, cos, sin, ctx.unsqueeze_dim, ctx.rotary_dim, True, ctx.orders)
        return dq, dk, None, None, None, None, None
