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
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from liger_kernel.ops.utils import (
    FLOAT_DTYPES,
    LigerFunction,
    cdiv,
    check_float,
    check_same_device,
    check_same_dtype,
    empty_like_output,
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
# An alternative that ``benchmarks/bench_qwen2vl_mrope.py`` measures against the default (off):
# a program takes one block of the heads of q and k together (its "slots": q's heads, then k's), all
# loaded before any store, instead of every head of q, then of k, a block at a time, each block
# stored before the next one loads.
SLOTS = False


@triton.jit
def _load_pairs(x, mask, HALF: tl.constexpr, HALF_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
                COMPUTE: tl.constexpr):  # fmt: skip
    """(x1, x2), the members of every rotated pair of the heads whose first features ``x`` points
    at ([BLOCK_T, BLOCK_H, 1], features at unit stride): (d, d + HALF), or (2d, 2d + 1) when
    ``INTERLEAVED``; each [BLOCK_T, BLOCK_H, HALF_PAD]."""
    if INTERLEAVED:
        # One contiguous load of the head, split into its pairs in registers (stride-2 loads
        # would not vectorize).
        e = tl.arange(0, 2 * HALF_PAD)[None, None, :]
        mask_e = mask & (e < 2 * HALF) if HALF != HALF_PAD else mask
        pairs = tl.load(x + e, mask=mask_e, other=0.0).to(COMPUTE)
        x1, x2 = tl.split(tl.reshape(pairs, (x.shape[0], x.shape[1], HALF_PAD, 2)))
    else:
        # The feature mask only where rotary_dim / 2 is not a power of two: a mask constant
        # along the features keeps the loads vectorized.
        d = tl.arange(0, HALF_PAD)[None, None, :]
        mask_d = mask & (d < HALF) if HALF != HALF_PAD else mask
        x1 = tl.load(x + d, mask=mask_d, other=0.0).to(COMPUTE)
        x2 = tl.load(x + (d + HALF), mask=mask_d, other=0.0).to(COMPUTE)
    return x1, x2


@triton.jit
def _store_rotated(x, o, mask, x1, x2, c1, c2, s1, s2, HALF: tl.constexpr, PASS: tl.constexpr,
                   HALF_PAD: tl.constexpr, PASS_PAD: tl.constexpr, INTERLEAVED: tl.constexpr):  # fmt: skip
    """Store the rotated pairs ``(x1, x2)`` (``_load_pairs``) at ``o``, and copy the features past
    the rotary ones from ``x``."""
    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2
    if INTERLEAVED:
        e = tl.arange(0, 2 * HALF_PAD)[None, None, :]
        mask_e = mask & (e < 2 * HALF) if HALF != HALF_PAD else mask
        rotated = tl.reshape(tl.join(y1, y2), (x.shape[0], x.shape[1], 2 * HALF_PAD))
        tl.store(o + e, rotated.to(o.dtype.element_ty), mask=mask_e)
    else:
        d = tl.arange(0, HALF_PAD)[None, None, :]
        mask_d = mask & (d < HALF) if HALF != HALF_PAD else mask
        tl.store(o + d, y1.to(o.dtype.element_ty), mask=mask_d)
        tl.store(o + (d + HALF), y2.to(o.dtype.element_ty), mask=mask_d)
    if PASS > 0:
        p = 2 * HALF + tl.arange(0, PASS_PAD)[None, None, :]
        mask_p = mask & (p < 2 * HALF + PASS)
        tl.store(o + p, tl.load(x + p, mask=mask_p, other=0.0), mask=mask_p)


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
    INTERLEAVED: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """Rotate every head of one tensor at positions ``t`` ([BLOCK_T, 1, 1]) of sequence ``b``,
    ``BLOCK_H`` heads at a time."""
    x_row = x_ptr + b * stride_xb + t * stride_xt
    o_row = o_ptr + b * stride_ob + t * stride_ot
    for h0 in range(0, n_heads, BLOCK_H):
        h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)[None, :, None]
        mask = t_mask & (h < n_heads)
        x, o = x_row + h * stride_xh, o_row + h * stride_oh
        x1, x2 = _load_pairs(x, mask, HALF, HALF_PAD, INTERLEAVED, COMPUTE)
        _store_rotated(x, o, mask, x1, x2, c1, c2, s1, s2, HALF, PASS, HALF_PAD, PASS_PAD, INTERLEAVED)


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
    SLOTS: tl.constexpr,
    INVERSE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    # One flat grid axis over (sequence, block of positions[, block of slots]): no 65535 limit on
    # the batch. Every feature dimension has unit stride, and cos and sin share their strides
    # (fewer launch args).
    pid = tl.program_id(0)
    if SLOTS:  # BLOCK_HQ slots (heads of q, then of k) a program, consecutive programs on one position block
        n_slot_blocks = tl.cdiv(n_q_heads + n_k_heads, BLOCK_HQ)
        slot_block = pid % n_slot_blocks
        pid = pid // n_slot_blocks
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
    if SLOTS:
        # Each slot is a head of q or of k: a masked access to each, as a select between the two
        # pointers would lose their contiguity (the accesses would not vectorize).
        slot = (slot_block * BLOCK_HQ + tl.arange(0, BLOCK_HQ)).to(tl.int64)[None, :, None]
        h_k = slot - n_q_heads
        in_q, mask_q, mask_k = slot < n_q_heads, t_mask & (slot < n_q_heads), t_mask & (h_k >= 0) & (h_k < n_k_heads)
        xq, oq = q_ptr + b * sqb + t * sqt + slot * sqh, qo_ptr + b * sqob + t * sqot + slot * sqoh
        xk, ok = k_ptr + b * skb + t * skt + h_k * skh, ko_ptr + b * skob + t * skot + h_k * skoh
        q1, q2 = _load_pairs(xq, mask_q, HALF, HALF_PAD, INTERLEAVED, COMPUTE)
        k1, k2 = _load_pairs(xk, mask_k, HALF, HALF_PAD, INTERLEAVED, COMPUTE)
        x1, x2 = tl.where(in_q, q1, k1), tl.where(in_q, q2, k2)
        _store_rotated(xq, oq, mask_q, x1, x2, c1, c2, s1, s2, HALF, PASS, HALF_PAD, PASS_PAD, INTERLEAVED)
        _store_rotated(xk, ok, mask_k, x1, x2, c1, c2, s1, s2, HALF, PASS, HALF_PAD, PASS_PAD, INTERLEAVED)
    else:
        _rotate_heads(
            q_ptr, qo_ptr, sqb, sqh, sqt, sqob, sqoh, sqot, b, t, t_mask, n_q_heads, c1, c2, s1, s2,
            HALF, PASS, BLOCK_HQ, HALF_PAD, PASS_PAD, INTERLEAVED, COMPUTE,
        )  # fmt: skip
        _rotate_heads(
            k_ptr, ko_ptr, skb, skh, skt, skob, skoh, skot, b, t, t_mask, n_k_heads, c1, c2, s1, s2,
            HALF, PASS, BLOCK_HK, HALF_PAD, PASS_PAD, INTERLEAVED, COMPUTE,
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
    """(BLOCK_T, BLOCK_HQ cap, number of position blocks); with ``SLOTS``, ``n_q_heads`` counts the
    heads of q and k together."""
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
    outputs_like_inputs: tuple  # whether q (k) has its output's strides already (then ``empty_like``)
    grid: tuple  # empty when there is nothing to rotate
    scalars: tuple  # the kernel's arguments after its six pointers: (forward's, inverse's)
    num_warps: int


@functools.lru_cache(maxsize=512)
def _launch_plan(q_shape, q_strides, k_shape, k_strides, cos_shape, cos_strides, sin_shape, sin_strides,
                 unsqueeze_dim, rotary_dim, orders, fp64, mrope_section, interleaved) -> _Plan:  # fmt: skip
    """Validate the shapes (errors name the argument) and work out a launch, once per geometry: a
    forward+backward otherwise spends more host time here than the GPU spends on small inputs.
    ``orders`` None: the outputs take the inputs' memory orders (forward). ``mrope_section``: cos
    and sin are [3, ...] planes of angles, taken per section (see ``rope_launch``)."""
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
    out_strides = (_dense_strides(q_shape, orders[0]), _dense_strides(k_shape, orders[1]))
    same = (out_strides[0] == tuple(q_strides), out_strides[1] == tuple(k_strides))
    batch, n_q_heads, seq_len, head_dim = _bhtd(q_shape, unsqueeze_dim)
    n_k_heads = _bhtd(k_shape, unsqueeze_dim)[1]
    if not readable or batch * seq_len == 0:
        return _Plan(rotary_dim, readable, orders, out_strides, same, (), (), NUM_WARPS)
    half = rotary_dim // 2
    half_pad = next_power_of_2(half)
    pass_dims = head_dim - rotary_dim
    heads = n_q_heads + n_k_heads if SLOTS else n_q_heads  # what one program's block of heads covers
    block_t, block_h, n_t_blocks = _launch_settings(batch, seq_len, heads, half_pad)
    n_programs = batch * n_t_blocks * (cdiv(heads, block_h) if SLOTS else 1)
    # cos/sin as [B or 1, T, R]; batch stride 0 when broadcast over the batch
    cos_b = 0 if len(cos_shape) == 2 or cos_shape[0] == 1 else cos_strides[0]
    sections = (half, half) if mrope_section is None else (mrope_section[0], mrope_section[0] + mrope_section[1])
    scalars = (
        *_bhtd(q_strides, unsqueeze_dim)[:3], *_bhtd(k_strides, unsqueeze_dim)[:3],
        *_bhtd(out_strides[0], unsqueeze_dim)[:3], *_bhtd(out_strides[1], unsqueeze_dim)[:3],
        plane_stride, cos_b, cos_strides[-2], seq_len, n_q_heads, n_k_heads,
        # the constexprs, in the kernel's order
        half, pass_dims, block_t, block_h, max(1, min(next_power_of_2(n_k_heads), block_h)), half_pad,
        next_power_of_2(pass_dims) if pass_dims else 1, *sections, interleaved, SLOTS,
    )  # fmt: skip
    compute = tl.float64 if fp64 else tl.float32
    directions = ((*scalars, False, compute), (*scalars, True, compute))
    return _Plan(rotary_dim, readable, orders, out_strides, same, (n_programs,), directions, NUM_WARPS)


def rope_plan(q, k, cos, sin, unsqueeze_dim: int, rotary_dim, orders=None, mrope_section=None, interleaved=False):
    """The launch plan (a ``_Plan``) for these tensors (shapes checked); see ``_launch_plan``."""
    return _launch_plan(
        q.shape, q.stride(), k.shape, k.stride(), cos.shape, cos.stride(), sin.shape, sin.stride(), unsqueeze_dim,
        rotary_dim, orders, q.dtype == torch.float64, mrope_section, interleaved,
    )  # fmt: skip


def _new_output(x, strides: tuple, like_x: bool) -> torch.Tensor:
    """A new tensor of ``x``'s shape with ``strides``: ``empty_like(x)`` where x has them already
    (dense, so it keeps them), ~1 us less host time than ``empty_strided``."""
    if not like_x:
        return empty_output(x.shape, x, strides=strides)
    return empty_like_output(x, torch.preserve_format)


def rope_launch(q, k, cos, sin, unsqueeze_dim: int, rotary_dim, inverse: bool, orders=None, mrope_section=None,
                interleaved=False):  # fmt: skip
    """Rotate (``inverse=False``) or un-rotate q and k in one launch into new tensors, laid out in
    memory as q and k are (``orders`` None) or in the given memory orders. Returns (q_out, k_out,
    plan).

    Two variants share the kernel. ``mrope_section`` (3 ints summing to R/2): cos and sin are
    [3, B or 1, T, R], one plane of angles per position set (temporal, height, width), and each half
    of the rotary features takes its first section from plane 0, the next from plane 1, the last
    from plane 2 (Qwen2-VL's multimodal RoPE, without building the merged [B, T, R] tables).
    ``interleaved``: the pairs are adjacent features (2i, 2i + 1), and cos is the real view of the
    complex frequencies, (cos, sin) pairs flattened to [.., T, R] (``sin`` is not read; pass cos).
    """
    plan = rope_plan(q, k, cos, sin, unsqueeze_dim, rotary_dim, orders, mrope_section, interleaved)
    if not plan.readable:
        q, k = _unit_feature_stride(q), _unit_feature_stride(k)
        cos, sin = _unit_feature_stride(cos), _unit_feature_stride(sin)
        if cos.stride() != sin.stride():
            cos, sin = cos.contiguous(), sin.contiguous()
        plan = rope_plan(q, k, cos, sin, unsqueeze_dim, rotary_dim, plan.orders, mrope_section, interleaved)
    qo = _new_output(q, plan.out_strides[0], plan.outputs_like_inputs[0])
    ko = _new_output(k, plan.out_strides[1], plan.outputs_like_inputs[1])
    if plan.grid:
        launch(_rope_kernel, plan.grid, (q, k, qo, ko, cos, sin), plan.scalars[inverse], plan.num_warps)
    return qo, ko, plan


def check_rope_tensors(q, k, cos, sin) -> None:
    """Types, dtypes and devices of the inputs (errors name the argument). Valid inputs take one
    expression (~1 us on the CPU machine against ~4 for the checks one by one)."""
    if (
        type(q) is type(k) is type(cos) is type(sin) is torch.Tensor
        and q.dtype == k.dtype
        and q.dtype in FLOAT_DTYPES
        and cos.dtype in FLOAT_DTYPES
        and sin.dtype in FLOAT_DTYPES
        and q.device == k.device == cos.device == sin.device
    ):
        return
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
        """Shared by the RoPE variants (M-RoPE, Llama 4): the inverse rotation of the forward's launch."""
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
    """Keep what ``LigerRopeFunction.backward`` needs to run the forward's launch inverted."""
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
    with torch.enable_grad():
        q, k = dq.detach().requires_grad_(), dk.detach().requires_grad_()
        return torch.autograd.grad(reference(q, k, cos.detach(), sin.detach(), *args), (q, k), (dq, dk))


def rope_backward(dq, dk, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """The peer's op helper: ``(dq_in, dk_in)``, the gradients of q and k for the upstream
    ``dq``, ``dk`` of ``rope_forward`` (the inverse rotation), as new tensors."""
    check_rope_tensors(dq, dk, cos, sin)
    if not use_triton(dq):
        rotary_dim = check_rope_shapes(dq.shape, dk.shape, cos.shape, sin.shape, unsqueeze_dim, rotary_dim)
        return reference_backward(rope_reference, dq, dk, cos, sin, None, unsqueeze_dim, rotary_dim)
    dq_in, dk_in, _ = rope_launch(dq, dk, cos, sin, unsqueeze_dim, rotary_dim, True)
    return dq_in, dk_in
