"""Rotary position embedding (RoPE) in Hugging Face's ``rotate_half`` layout, for q and k at once.

``out = x * cos + rotate_half(x) * sin`` over the first ``rotary_dim`` features of every head, the
rest passed through. One launch rotates q and k: a program owns a block of positions of one
sequence, loads cos/sin there once and reuses them for every head of q and of k. Backward is the
same kernel running the inverse rotation, so a step moves q and k four times (read + write in each
direction), the memory floor. Any strides with the features at unit stride are read in place:
Hugging Face's q and k are transposed views of the projections, and copying them first would add
two passes.
"""

import functools
import math
import sys
import threading
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from liger_kernel.ops.swiglu import _reader_counts
from liger_kernel.ops.utils import (
    LigerFunction,
    _is_compiling,
    cdiv,
    check_float,
    check_same_device,
    check_same_dtype,
    empty_output,
    fallback_backward,
    fallback_forward,
    launch,
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
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HALF_PAD: tl.constexpr,
    PASS_PAD: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """Rotate every head of one tensor at positions ``t`` ([BLOCK_T, 1, 1]) of sequence ``b``
    (features at unit stride). The pairs are (d, d + HALF), or (2d, 2d + 1) when ``INTERLEAVED``."""
    d = tl.arange(0, HALF_PAD)[None, None, :]
    x_row = x_ptr + b * stride_xb + t * stride_xt
    o_row = o_ptr + b * stride_ob + t * stride_ot
    for h0 in range(0, n_heads, BLOCK_H):
        h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)[None, :, None]
        mask = t_mask & (h < n_heads)
        x = x_row + h * stride_xh
        o = o_row + h * stride_oh
        if INTERLEAVED:
            # One contiguous load of the head, split into its pairs in registers (stride-2 loads
            # would not vectorize).
            e = tl.arange(0, 2 * HALF_PAD)[None, None, :]
            mask_e = mask & (e < 2 * HALF) if HALF != HALF_PAD else mask
            pairs = tl.load(x + e, mask=mask_e, other=0.0).to(COMPUTE)
            x1, x2 = tl.split(tl.reshape(pairs, (BLOCK_T, BLOCK_H, HALF_PAD, 2)))
            rotated = tl.join(x1 * c1 - x2 * s1, x2 * c2 + x1 * s2)
            tl.store(
                o + e, tl.reshape(rotated, (BLOCK_T, BLOCK_H, 2 * HALF_PAD)).to(o_ptr.dtype.element_ty), mask=mask_e
            )
        else:
            # The feature mask only where rotary_dim / 2 is not a power of two: a mask constant
            # along the features keeps the loads vectorized.
            mask_d = mask & (d < HALF) if HALF != HALF_PAD else mask
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
    scp,
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
    SECTION_1: tl.constexpr,
    SECTION_2: tl.constexpr,
    INTERLEAVED: tl.constexpr,
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
    if SECTION_1 < HALF:
        # Multimodal RoPE: features [0, SECTION_1) take the angles of plane 0 (temporal positions),
        # [SECTION_1, SECTION_2) of plane 1 (height), the rest of plane 2 (width), in each half.
        plane = (d >= SECTION_1).to(tl.int64) + (d >= SECTION_2).to(tl.int64)
        c += plane * scp
        s += plane * scp
    if INTERLEAVED:
        # cos holds (cos, sin) pairs: the real view of complex frequencies, one angle per pair.
        e = tl.arange(0, 2 * HALF_PAD)[None, None, :]
        pairs = tl.load(c + e, mask=t_mask & (e < 2 * HALF), other=0.0).to(COMPUTE)
        c1, s1 = tl.split(tl.reshape(pairs, (BLOCK_T, 1, HALF_PAD, 2)))
        c2, s2 = c1, s1
    else:
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
        HALF, PASS, BLOCK_T, BLOCK_HQ, HALF_PAD, PASS_PAD, INTERLEAVED, COMPUTE,
    )  # fmt: skip
    _rotate_heads(
        k_ptr, ko_ptr, skb, skh, skt, skob, skoh, skot, b, t, t_mask, n_k_heads, c1, c2, s1, s2,
        HALF, PASS, BLOCK_T, BLOCK_HK, HALF_PAD, PASS_PAD, INTERLEAVED, COMPUTE,
    )  # fmt: skip


def _bhtd(values: tuple, unsqueeze_dim: int) -> tuple:
    """Per-dimension ``values`` (shape or strides) of a q/k given as [B, H, T, D]
    (``unsqueeze_dim=1``) or [B, T, H, D] (2), in [B, H, T, D] order."""
    return values if unsqueeze_dim == 1 else (values[0], values[2], values[1], values[3])


def _layout_order(shape: tuple, strides: tuple) -> tuple:
    """The dimensions from outermost to innermost in memory, the feature dimension last."""
    return (*sorted(range(len(shape) - 1), key=lambda i: (-strides[i], -shape[i], i)), len(shape) - 1)


def _dense_strides(shape: tuple, order: tuple) -> tuple:
    """Strides of a dense tensor of ``shape`` whose dimensions lie in memory in ``order``.

    The outputs (and, in backward, the input gradients) take q's and k's memory order. HF's q and
    k are [B, T, H, D] projections viewed as [B, H, T, D]; an output in that same [B, T, H, D]
    memory order is what HF's eager RoPE returns, what flash and memory-efficient attention read
    natively, and what lets the gradient flow back through the transpose and the projection's
    ``view`` without a copy. Contiguous inputs get contiguous outputs.
    """
    strides, step = [0] * len(shape), 1
    for i in reversed(order):
        strides[i], step = step, step * shape[i]
    return tuple(strides)


def _unit_features(shape: tuple, strides: tuple) -> bool:
    """Whether the last dimension is at unit stride (the kernel indexes features directly)."""
    return strides[-1] == 1 or shape[-1] == 1


def _unit_feature_stride(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a contiguous copy when its last dimension is not at unit stride (rare)."""
    return x if _unit_features(x.shape, x.stride()) else x.contiguous()


def _readable(q_shape, q_strides, k_shape, k_strides, cos_shape, cos_strides, sin_strides) -> bool:
    """Whether the kernel reads these in place: features at unit stride, cos and sin with one set
    of strides (fewer launch arguments)."""
    pairs = ((q_shape, q_strides), (k_shape, k_strides), (cos_shape, cos_strides))
    return all(_unit_features(*pair) for pair in pairs) and cos_strides == sin_strides


def _launch_settings(batch: int, seq_len: int, n_q_heads: int, half_pad: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_HQ cap, number of position blocks)."""
    block_h = max(1, min(next_power_of_2(n_q_heads), TILE // half_pad))
    block_t = max(1, min(TILE // (block_h * half_pad), next_power_of_2(seq_len), 64))
    while block_t > 1 and batch * cdiv(seq_len, block_t) < MIN_PROGRAMS:
        block_t //= 2
    return block_t, block_h, cdiv(seq_len, block_t)


class _Plan(NamedTuple):
    """Everything about one launch that follows from the inputs' shapes and strides."""

    rotary_dim: int
    readable: bool  # False: copy the inputs with ``_unit_feature_stride`` and plan again
    orders: tuple  # memory orders of the outputs (q's, k's)
    out_strides: tuple  # strides of the outputs (q's, k's)
    grid: tuple  # empty when there is nothing to rotate
    int_args: tuple  # the kernel's arguments after its six pointers
    meta: dict  # the kernel's constexprs and num_warps


@functools.lru_cache(maxsize=512)
def _launch_plan(q_shape, q_strides, k_shape, k_strides, cos_shape, cos_strides, sin_shape, sin_strides,
                 unsqueeze_dim, rotary_dim, orders, fp64, mrope_section, interleaved,
                 given_strides) -> _Plan:  # fmt: skip
    """Validate the shapes (errors name the argument) and work out a launch, once per geometry: a
    forward+backward otherwise spends more host time here than the GPU spends on small inputs.
    ``orders`` None: the outputs take the inputs' memory orders (forward). ``mrope_section``: cos
    and sin are [3, ...] planes of angles, taken per section (see ``rope_launch``).
    ``given_strides``: (q's, k's) output strides, None for an output of its own (dense, in its order)."""
    readable = _readable(q_shape, q_strides, k_shape, k_strides, cos_shape, cos_strides, sin_strides)
    plane_stride = 0
    if mrope_section is not None:
        check_mrope_section(cos_shape, mrope_section)
        check_mrope_section(sin_shape, mrope_section)
        plane_stride = cos_strides[0]
        cos_shape, cos_strides, sin_shape = cos_shape[1:], cos_strides[1:], sin_shape[1:]
    rotary_dim = check_rope_shapes(q_shape, k_shape, cos_shape, sin_shape, unsqueeze_dim, rotary_dim)
    if orders is None:
        orders = (_layout_order(q_shape, q_strides), _layout_order(k_shape, k_strides))
    out_strides = tuple(
        given or _dense_strides(shape, order) for given, shape, order in zip(given_strides, (q_shape, k_shape), orders)
    )
    batch, n_q_heads, seq_len, head_dim = _bhtd(q_shape, unsqueeze_dim)
    n_k_heads = _bhtd(k_shape, unsqueeze_dim)[1]
    if not readable or batch * seq_len == 0:
        return _Plan(rotary_dim, readable, orders, out_strides, (), (), {})
    half = rotary_dim // 2
    half_pad = next_power_of_2(half)
    pass_dims = head_dim - rotary_dim
    block_t, block_h, n_t_blocks = _launch_settings(batch, seq_len, n_q_heads, half_pad)
    # cos/sin as [B or 1, T, R]; batch stride 0 when broadcast over the batch
    cos_b = 0 if len(cos_shape) == 2 or cos_shape[0] == 1 else cos_strides[0]
    int_args = (
        *_bhtd(q_strides, unsqueeze_dim)[:3], *_bhtd(k_strides, unsqueeze_dim)[:3],
        *_bhtd(out_strides[0], unsqueeze_dim)[:3], *_bhtd(out_strides[1], unsqueeze_dim)[:3],
        plane_stride, cos_b, cos_strides[-2], seq_len, n_q_heads, n_k_heads,
    )  # fmt: skip
    sections = (half, half) if mrope_section is None else (mrope_section[0], mrope_section[0] + mrope_section[1])
    meta = dict(
        HALF=half,
        PASS=pass_dims,
        BLOCK_T=block_t,
        BLOCK_HQ=block_h,
        BLOCK_HK=max(1, min(next_power_of_2(n_k_heads), block_h)),
        HALF_PAD=half_pad,
        PASS_PAD=next_power_of_2(pass_dims) if pass_dims else 1,
        SECTION_1=sections[0],
        SECTION_2=sections[1],
        INTERLEAVED=interleaved,
        COMPUTE=tl.float64 if fp64 else tl.float32,
        num_warps=NUM_WARPS,
    )
    return _Plan(rotary_dim, readable, orders, out_strides, (batch * n_t_blocks,), int_args, meta)


def rope_plan(q, k, cos, sin, unsqueeze_dim: int, rotary_dim, orders=None, mrope_section=None, interleaved=False,
              out=(None, None)):  # fmt: skip
    """The launch plan (a ``_Plan``) for these tensors (shapes checked); see ``_launch_plan``."""
    given_strides = tuple(None if o is None else o.stride() for o in out)
    return _launch_plan(
        q.shape, q.stride(), k.shape, k.stride(), cos.shape, cos.stride(), sin.shape, sin.stride(), unsqueeze_dim,
        rotary_dim, orders, q.dtype == torch.float64, mrope_section, interleaved, given_strides,
    )  # fmt: skip


def rope_launch(q, k, cos, sin, unsqueeze_dim: int, rotary_dim, inverse: bool, orders=None, mrope_section=None,
                interleaved=False, out=(None, None)):  # fmt: skip
    """Rotate (``inverse=False``) or un-rotate q and k in one launch into new tensors, laid out in
    memory as q and k are (``orders`` None) or in the given memory orders, or into ``out`` (q's
    and k's outputs, None for a new one): q and k themselves to rotate them in place (each element
    is read before it is written, by the program that writes it), which ``in_place_bases`` and
    ``owned_grads`` choose. Returns (q_out, k_out, plan).

    Two variants share the kernel. ``mrope_section`` (3 ints summing to R/2): cos and sin are
    [3, B or 1, T, R], one plane of angles per position set (temporal, height, width), and each half
    of the rotary features takes its first section from plane 0, the next from plane 1, the last
    from plane 2 (Qwen2-VL's multimodal RoPE, without building the merged [B, T, R] tables).
    ``interleaved``: the pairs are adjacent features (2i, 2i + 1), and cos is the real view of the
    complex frequencies, (cos, sin) pairs flattened to [.., T, R] (``sin`` is not read; pass cos).
    """
    plan = rope_plan(q, k, cos, sin, unsqueeze_dim, rotary_dim, orders, mrope_section, interleaved, out)
    if not plan.readable:
        q, k = _unit_feature_stride(q), _unit_feature_stride(k)
        cos, sin = _unit_feature_stride(cos), _unit_feature_stride(sin)
        if cos.stride() != sin.stride():
            cos, sin = cos.contiguous(), sin.contiguous()
        plan = rope_plan(q, k, cos, sin, unsqueeze_dim, rotary_dim, plan.orders, mrope_section, interleaved, out)
    qo = empty_output(q.shape, q, strides=plan.out_strides[0]) if out[0] is None else out[0]
    ko = empty_output(k.shape, k, strides=plan.out_strides[1]) if out[1] is None else out[1]
    if plan.grid:
        m = plan.meta
        constexprs = (m["HALF"], m["PASS"], m["BLOCK_T"], m["BLOCK_HQ"], m["BLOCK_HK"], m["HALF_PAD"], m["PASS_PAD"])
        constexprs += (m["SECTION_1"], m["SECTION_2"], m["INTERLEAVED"])
        scalars = (*plan.int_args, *constexprs, inverse, m["COMPUTE"])
        launch(_rope_kernel, plan.grid, (q, k, qo, ko, cos, sin), scalars, m["num_warps"])
    return qo, ko, plan


def check_rope_tensors(q, k, cos, sin) -> None:
    """Types, dtypes and devices of the inputs (errors name the argument)."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_float(name, t)
    check_same_device(q=q, k=k, cos=cos, sin=sin)
    check_same_dtype(q=q, k=k)


def check_mrope_section(cos_shape, mrope_section) -> None:
    """Multimodal RoPE's cos/sin [3, B or 1, T, R] and sections: three sizes summing to R / 2."""
    if len(cos_shape) != 4 or cos_shape[0] != 3:
        raise ValueError(
            f"`cos` and `sin` must be [3, B, T, R] (temporal, height and width angles) for multimodal RoPE; "
            f"got {tuple(cos_shape)}."
        )
    if len(mrope_section) != 3 or min(mrope_section) < 0 or 2 * sum(mrope_section) != cos_shape[-1]:
        raise ValueError(
            f"`mrope_section` must be 3 non-negative sizes summing to cos.shape[-1] / 2 = {cos_shape[-1] / 2:g}; "
            f"got {list(mrope_section)}."
        )


def check_rope_shapes(q_shape, k_shape, cos_shape, sin_shape, unsqueeze_dim, rotary_dim) -> int:
    """Validate the shapes (errors name the argument); returns the rotary dimension."""
    if unsqueeze_dim not in (1, 2):
        raise ValueError(f"`unsqueeze_dim` must be 1 (q, k as [B, H, T, D]) or 2 ([B, T, H, D]), got {unsqueeze_dim}.")
    for name, shape in (("q", q_shape), ("k", k_shape)):
        if len(shape) != 4:
            raise ValueError(f"`{name}` must be 4-D ([B, H, T, D] or [B, T, H, D]), got shape {tuple(shape)}.")
    t_dim = 3 - unsqueeze_dim
    batch, seq_len, head_dim = q_shape[0], q_shape[t_dim], q_shape[-1]
    if k_shape[-1] != head_dim:
        raise ValueError(f"`k` has head_dim {k_shape[-1]} but `q` has {head_dim}: they must match.")
    if k_shape[0] != batch or k_shape[t_dim] != seq_len:
        raise ValueError(
            f"`k` has shape {tuple(k_shape)} but `q` has {tuple(q_shape)}: batch and sequence lengths must match."
        )
    if tuple(cos_shape) != tuple(sin_shape):
        raise ValueError(f"`sin` has shape {tuple(sin_shape)} but `cos` has {tuple(cos_shape)}: they must match.")
    if (
        len(cos_shape) not in (2, 3)
        or cos_shape[-2] != seq_len
        or (len(cos_shape) == 3 and cos_shape[0] not in (1, batch))
    ):
        raise ValueError(
            f"`cos` and `sin` must be [1, T, R], [B, T, R] or [T, R] with B={batch}, T={seq_len}; "
            f"got {tuple(cos_shape)}."
        )
    rotary_dim = cos_shape[-1] if rotary_dim is None else rotary_dim
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim or rotary_dim > cos_shape[-1]:
        raise ValueError(
            f"`rotary_dim` must be even, positive and at most head_dim ({head_dim}) and cos.shape[-1] "
            f"({cos_shape[-1]}); got {rotary_dim}."
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
        check_rope_tensors(q, k, cos, sin)
        ctx.use_triton = use_triton(q)
        if not ctx.use_triton:
            rotary_dim = check_rope_shapes(q.shape, k.shape, cos.shape, sin.shape, unsqueeze_dim, rotary_dim)
            return fallback_forward(
                ctx, rope_reference, q, k, cos.detach(), sin.detach(), None, unsqueeze_dim, rotary_dim
            )
        qo, ko, plan = rope_launch(q, k, cos, sin, unsqueeze_dim, rotary_dim, False)
        save_launch(ctx, plan, cos, sin, unsqueeze_dim)
        return qo, ko

    @staticmethod
    def backward(ctx, dq, dk):
        if ctx.use_triton:
            cos, sin = ctx.saved_tensors
            unsqueeze_dim, rotary_dim, orders, mrope_section, interleaved = ctx.launch
            # The gradients take q's and k's layouts, whatever the upstream ones (expanded, transposed).
            dq, dk, _ = rope_launch(
                dq, dk, cos, sin, unsqueeze_dim, rotary_dim, True, orders, mrope_section, interleaved
            )
        else:
            dq, dk = fallback_backward(ctx, dq, dk)[:2]
        return dq, dk, *[None] * (len(ctx.needs_input_grad) - 2)


def save_launch(ctx, plan, cos, sin, unsqueeze_dim, mrope_section=None, interleaved=False) -> None:
    """Keep what the backward needs to run the forward's launch inverted."""
    ctx.launch = (unsqueeze_dim, plan.rotary_dim, plan.orders, mrope_section, interleaved)
    ctx.save_for_backward(cos, sin)


def rope_forward(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """The peer's op helper: ``(q_embed, k_embed, cos, sin)``, RoPE of q and k as
    ``LigerRopeFunction`` computes it (new tensors in q's and k's layouts), no autograd; cos and
    sin are handed back for ``rope_backward``."""
    check_rope_tensors(q, k, cos, sin)
    if not use_triton(q):
        rotary_dim = check_rope_shapes(q.shape, k.shape, cos.shape, sin.shape, unsqueeze_dim, rotary_dim)
        return (*rope_reference(q, k, cos, sin, None, unsqueeze_dim, rotary_dim), cos, sin)
    qo, ko, _ = rope_launch(q, k, cos, sin, unsqueeze_dim, rotary_dim, False)
    return qo, ko, cos, sin


def reference_backward(reference, dq, dk, cos, sin, *args):
    """The gradients of q and k for upstream ``dq``, ``dk`` through ``reference(q, k, cos, sin,
    *args)``, a rotation of q and k (the op helpers' PyTorch path)."""
    return _vjp(lambda q, k: reference(q, k, cos.detach(), sin.detach(), *args), dq, dk)


def rope_backward(dq, dk, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """The peer's op helper: ``(dq_in, dk_in)``, the gradients of q and k for the upstream
    ``dq``, ``dk`` of ``rope_forward`` (the inverse rotation), as new tensors."""
    check_rope_tensors(dq, dk, cos, sin)
    if not use_triton(dq):
        rotary_dim = check_rope_shapes(dq.shape, dk.shape, cos.shape, sin.shape, unsqueeze_dim, rotary_dim)
        return reference_backward(rope_reference, dq, dk, cos, sin, None, unsqueeze_dim, rotary_dim)
    dq_in, dk_in, _ = rope_launch(dq, dk, cos, sin, unsqueeze_dim, rotary_dim, True)
    return dq_in, dk_in


# ----------------------------------------------------------------------------- rotating in place
# M-RoPE and Llama 4 RoPE rotate q and k in place, as Liger Kernel 0.8.5 does: no new q/k outputs
# (36 MB at Qwen2.5-VL-3B, b2 t4096; 96 MB at Llama 4 Scout, b2 t4096), and no new input gradients
# where the upstream gradient is only autograd's (attention's dq and dk: ``owned_grads``; the
# peer writes over it whoever holds it). Autograd is told (``ctx.mark_dirty``): a caller that
# saved the pre-rotation tensor for its own backward gets autograd's "modified by an inplace
# operation" error, never a gradient computed from the rotated values.
#
# HF's q and k are views (``q_proj(x).view(...).transpose(1, 2)``), and autograd lets a Function
# that modifies a view return that one tensor only. So for a view the Function's input marked dirty
# is its base (the projection's output), the view rides along detached for the kernel to write
# through, and ``apply`` returns the same view of the rotated base, rebuilt with ``view`` and
# ``permute`` (autograd would re-derive the caller's q through ``as_strided``, whose backward
# zero-fills and copies a base-sized buffer). The caller's q and k hold the rotated values too. A
# view that is not its whole contiguous base, permuted (a slice of a fused qkv), gets a new output.


@functools.lru_cache(maxsize=512)
def _layout(shape, strides, element_size, base_shape, base_contiguous) -> tuple:
    """(whether the kernel can write a tensor of these shape and strides in place, the bytes from
    its first element to its last, and, for a view of a base (``base_shape``) that is the whole
    contiguous base permuted, how to make it of the base: (shape to view it as, permutation, None
    for none), else None). Once per geometry: the checks cost more host time than the launch."""
    writable = _unit_features(shape, strides) and not any(s == 0 and n > 1 for n, s in zip(shape, strides))
    span = element_size * sum((n - 1) * s for n, s in zip(shape, strides))
    if base_shape is None or not base_contiguous or math.prod(shape) != math.prod(base_shape):
        return writable, span, None
    order = _layout_order(shape, strides)  # dense over all the base's elements: all of them, from its first
    dense = _dense_strides(shape, order)
    if not all(a == b or n == 1 for a, b, n in zip(strides, dense, shape)):
        return writable, span, None
    permutation = None if order == tuple(range(len(shape))) else tuple(sorted(range(len(shape)), key=order.index))
    return writable, span, ([shape[i] for i in order], permutation)


def _layout_of(t, base) -> tuple:
    return _layout(t.shape, t.stride(), t.element_size(), *((None, False) if base is None else
                                                            (base.shape, base.is_contiguous())))  # fmt: skip


def _base_to_write(t, base, layout, tracing):
    """The tensor to mark dirty to write ``t`` in place (``t`` itself, or its base ``base`` when
    ``t`` is that whole base permuted), or None where autograd would not allow it or the kernel
    cannot: features not at unit stride, an element shared by two indices (an expanded tensor),
    a leaf that requires grad or a view of one, a view autograd forbids writing (an output of
    split/unbind/chunk, or made under no_grad), an inference tensor outside inference mode."""
    if not layout[0] or (not tracing and t.is_inference() and not torch.is_inference_mode_enabled()):
        return None
    if t.requires_grad and t.is_leaf:  # a view made a leaf by ``requires_grad_()`` too
        return None
    if base is None:
        return t
    if layout[2] is None or (base.requires_grad and base.is_leaf):
        return None
    return base if tracing or not t.requires_grad or _creation_meta(t) == _DEFAULT_VIEW else None


_creation_meta = torch._C._autograd._get_creation_meta
_DEFAULT_VIEW = torch._C._autograd.CreationMeta.DEFAULT


def in_place_bases(q, k, tracing=False) -> tuple:
    """(q's base or None, k's base or None): the tensors the forward marks dirty to rotate q and k
    in place (``_base_to_write``), None for both where q and k may share memory. The others get
    new outputs in their layouts. ``tracing`` (Dynamo, fake tensors): without the checks it
    cannot trace (addresses, inference tensors, how a view was made)."""
    qb, kb = q._base, k._base
    q_layout, k_layout = _layout_of(q, qb), _layout_of(k, kb)
    if not tracing:
        q0, k0 = q.data_ptr(), k.data_ptr()
        if q0 <= k0 + k_layout[1] and k0 <= q0 + q_layout[1]:
            return None, None
    return _base_to_write(q, qb, q_layout, tracing), _base_to_write(k, kb, k_layout, tracing)


def _same_view(base, t):
    """``t`` (its whole base permuted, ``_layout``) as a view of ``base``, by view and permute."""
    shape, permutation = _layout_of(t, t._base)[2]
    return base.view(shape) if permutation is None else base.view(shape).permute(permutation)


def _region(t, base) -> tuple:
    """Where view ``t`` lies in ``base``: (shape, strides, offset), and the base's (shape, strides)."""
    return t.shape, t.stride(), t.storage_offset() - base.storage_offset(), base.shape, base.stride()


def _base_grad(g, owned, region) -> tuple:
    """For the gradient ``g`` of a base: (the view of q's or k's gradient to read, the view to write
    the rotated gradient into, the base's gradient to return). ``g`` itself where it is owned and
    laid out as the base; else a new buffer (``g`` copied in unless the view covers it all)."""
    shape, strides, offset, base_shape, base_strides = region
    if g.stride() == base_strides:
        src = g.as_strided(shape, strides, g.storage_offset() + offset)
        if owned is not None:
            return src, src, g
    full = torch.empty_strided(base_shape, base_strides, dtype=g.dtype, device=g.device)
    dst = full.as_strided(shape, strides, offset)
    if g.stride() != base_strides or dst.numel() != full.numel():
        full.copy_(g)
        src = dst
    return src, dst, full


class InPlaceRopeFunction(LigerRopeFunction):
    """Base of the RoPE variants that rotate q and k in place (see above). A subclass's ``forward``
    takes the peer's arguments (``N_ARGS`` after q and k, the last ones defaulting to ``DEFAULTS``),
    then ``q_base=None, k_base=None`` (from ``apply``) and calls ``rotate_in_place``."""

    N_ARGS, DEFAULTS = 0, ()

    @classmethod
    def apply(cls, q, k, *args):
        bases = (None, None) if _is_compiling() else in_place_bases(q, k)
        if bases == (None, None):
            return super().apply(q, k, *args)
        args = (*args, *cls.DEFAULTS[len(cls.DEFAULTS) - cls.N_ARGS + len(args) :], *bases)
        inputs = (x if b is None else x.detach() for x, b in zip((q, k), bases))
        out = super().apply(*inputs, *args)
        return tuple(o if b is None or x._base is None else _same_view(o, x) for x, b, o in zip((q, k), bases, out))

    @staticmethod
    def backward(ctx, d0, d1):
        """The inverse rotation over each base's region (see ``_base_grad``), or into new
        gradients in q's and k's layouts where an output was new."""
        owned = owned_grads(ctx, d0, d1)
        src, dst, full = [], [], []
        for g, o, region in zip((d0, d1), owned, ctx.regions):
            s, d, f = (g, o, None) if region is None else _base_grad(g, o, region)
            src.append(s), dst.append(d), full.append(f)
        if ctx.use_triton:
            cos, sin = ctx.saved_tensors
            unsqueeze_dim, rotary_dim, orders, mrope_section, interleaved = ctx.launch
            grads = rope_launch(*src, cos, sin, unsqueeze_dim, rotary_dim, True, orders, mrope_section, interleaved,
                                dst)[:2]  # fmt: skip
        else:
            grads = [g if d is None else d.copy_(g) for g, d in zip(ctx.vjp(*src), dst)]
        # a rotated base's gradient goes to the base (the last two inputs), not to its detached view
        views = [g if f is None else None for g, f in zip(grads, full)]
        return *views, *[None] * (len(ctx.needs_input_grad) - 4), *full


def rotate_in_place(ctx, q, k, q_base, k_base, launch, rotation) -> tuple:
    """The forward of an ``InPlaceRopeFunction``: ``launch(out)`` (the kernel, returning (q_out,
    k_out, plan)) or, where the kernels do not run, ``rotation(q, k)`` (the reference), written
    over q and k where their bases are given; those bases marked dirty and returned."""
    out = tuple(None if b is None else x for x, b in zip((q, k), (q_base, k_base)))
    ctx.in_place = True
    ctx.regions = tuple(None if b is None else _region(x, b) for x, b in zip((q, k), (q_base, k_base)))
    if ctx.use_triton:
        results = launch(out)[:2]
    else:
        with torch.no_grad():
            results = rotation(q, k)
        ctx.vjp = functools.partial(_vjp, rotation)
        results = tuple(r if o is None else o.copy_(r) for o, r in zip(out, results))
    written = [b for b in (q_base, k_base) if b is not None]
    if written:
        ctx.mark_dirty(*written)
    return tuple(r if b is None else b for r, b in zip(results, (q_base, k_base)))


def _vjp(rotation, dq, dk) -> tuple:
    """The gradients of q and k for upstream ``dq``, ``dk`` through the linear ``rotation(q, k)``."""
    with torch.enable_grad():
        q, k = dq.detach().requires_grad_(), dk.detach().requires_grad_()
        return torch.autograd.grad(rotation(q, k), (q, k), (dq, dk))


# What an upstream gradient only autograd holds reads as, by whether it is a view; set at import by ``_GradProbe``.
OWNED_GRAD_COUNTS = {}


def owned_grads(ctx, dq, dk) -> tuple:
    """(dq or None, dk or None): the upstream gradients the backward may write over, in the
    in-place variants (``ctx.in_place``). Only what nothing else can read: the whole of its
    memory (a gradient or a view covering all of its base: what reaches a rotated base through
    HF's ``view`` / ``transpose``; not an expanded ``sum()`` gradient nor a slice of another's),
    no other reference to it, its base or its storage (a gradient ``backward(gradient=g)`` was
    given, a hook that kept it, an add's gradient still waiting for the other branch), not under
    ``create_graph``; the counts that say so are measured at import through this very call."""
    if not getattr(ctx, "in_place", False) or torch.is_grad_enabled():
        return None, None
    return _owned(ctx, dq), _owned(ctx, dk)


def _owned(ctx, g):
    root = g._base
    counts = _reader_counts(g) if root is None else (*_reader_counts(g), root._use_count(), sys.getrefcount(root))
    if ctx.in_place == "calibrating":
        OWNED_GRAD_COUNTS[root is not None] = counts
    owned = (
        counts == OWNED_GRAD_COUNTS.get(root is not None)
        and (root is None or (root.numel() == g.numel() and root.data_ptr() == g.data_ptr()))
        and _unit_features(g.shape, g.stride())
        and not any(s == 0 and n > 1 for n, s in zip(g.shape, g.stride()))
    )
    return g if owned else None


class _GradProbe(InPlaceRopeFunction):
    """Hands ``InPlaceRopeFunction.backward`` fresh upstream gradients that only autograd holds (as
    they are, and through a view, ``view_grads``), so that ``owned_grads`` takes their reader
    counts: what "owned" reads as on this Python and torch."""

    @staticmethod
    def forward(ctx, q, k):  # leaves: never in place, so ``apply`` passes no bases
        ctx.use_triton, ctx.in_place, ctx.regions, ctx.vjp = False, "calibrating", (None, None), lambda *g: g
        return q.clone(), k.clone()


def _calibrate() -> None:
    try:
        for view_grads in (False, True):
            q, k = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
            outputs = _GradProbe.apply(q, k)
            sum(((t.t() if view_grads else t) * 2).sum() for t in outputs).backward()
    except AttributeError:  # torch without Tensor._use_count / _storage_Use_Count (private APIs)
        OWNED_GRAD_COUNTS.clear()


# In a fresh thread: grad mode, inference mode and saved-tensor hooks are thread-local.
_probe_thread = threading.Thread(target=_calibrate)
_probe_thread.start()
_probe_thread.join()
