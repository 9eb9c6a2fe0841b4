"""Fused linear cross-entropy: ``cross_entropy(x @ W.T + b, y)`` without the ``[BT, V]`` logits.

Two paths, picked by ``ce_mode`` (``"exact"``, the default, or ``"fast"``).

**Exact** (default), by one of two routes (the tiles, or accumulate; the rule is below). Every
gradient is one fp32 sum rounded once to the parameter's dtype, so its error against a float64
reference is that of rounding the exact result once (plus that of feeding the matmul bf16
dlogits), whatever the batch: no bf16 running sum. Logits are computed in fp32
(``torch.mm(..., out_dtype=torch.float32)``), since bf16 logits move each softmax term by up to
``|z| 2^-9`` relative: ~1.5x one rounding in both gradients on small CPU shapes, 3-6% per term
for the 20-30 sized logits of trained LMs.

- Tiles, forward, over token chunks (``EXACT_ROWS_BUDGET_BYTES`` of fp32 logits per chunk):
  ``z = x_c @ W.T (+ b)``; ``_row_stats_kernel`` gives each token's log-sum-exp, label logit and
  smoothing sum; ``row_terms`` turns them into the loss and three gradient coefficients per
  token; ``_dlogits_kernel`` writes ``dlogits`` over ``z``; ``grad_x_c = dlogits @ W`` over the
  whole vocabulary in one matmul, kept in fp32 until the upstream gradient is known.
- Tiles, backward, over vocabulary tiles (``EXACT_TILE_BUDGET_BYTES``; no fp32 ``[V, H]``
  buffer): recompute ``z[:, tile]`` for all tokens, ``_dlogits_kernel`` again (the same
  coefficients, times the upstream gradient), then ``grad_W[tile] = dlogits.T @ x``: contracted
  over all tokens in one matmul, written once.
  ``grad_x`` is the fp32 forward result times the upstream gradient, rounded once: exact for
  any upstream gradient, per token too (``reduction="none"`` needs no recomputation).
- Kept dlogits (``KeptDlogits``; whenever the weight needs a gradient and one upstream gradient
  scales all tokens): the weight gradient's own buffer, allocated in the forward, holds what
  the forward would otherwise allocate: the chunks' fp32 logits, then, for the first 7H/8
  tokens (``EXACT_KEPT_CHUNK_SHARE``; all of them when N is at most that), their bf16 dlogits
  vocabulary-major in its tail (``_dlogits_grid_kernel``; their ``grad_x`` is one matmul
  over them). The backward recomputes only the other tokens' logits, vocabulary-major, and
  builds each tile's ``[T, N]`` operand from both, then ``grad_W[tile] = g * (operand @ x)``
  with cuBLAS' alpha (the fp32 accumulator scaled, rounded once; ``g`` read on the host: one
  sync per backward) written into rows whose kept dlogits were already used. Flops: 8NHV minus
  2 K H V for K kept tokens (7.1NHV at N=8192, 6NHV at N <= 3584 for H=4096); memory unchanged.
- Accumulate route (``SummedGrads``; issue 16): token chunks of ``ACCUMULATE_ROWS_BUDGET_BYTES``
  of fp32 logits (1024 tokens at V=128256): logits and row stats as above, dlogits in place,
  ``grad_x_c = dlogits @ W`` and ``grad_W += dlogits.T @ x_c`` into ``ops/head_grad.py``'s
  ``WeightGradAccumulator`` (fp32 [V, H] in two halves, scaled by the upstream gradient and
  rounded in place into its first half in the backward: one fp32 sum rounded once, as exact as
  the tiles), the bias's sum in fp32. 6NHV and no second pass; peak extra memory the fp32
  accumulator + the fp32 input gradient + one chunk: 1002 + 64 + 501 = 1567 MiB at issue 16's
  head (N=8192, H=2048; the tile route 597 MiB, Liger 0.8.5 597), 2004 + 128 + 501 = 2633 MiB at
  N=8192, H=4096 (tiles and Liger ~1130). The chunk size is the balance of two costs: each chunk's
  accumulating matmul reads and writes the fp32 accumulator (8 bytes per [V, H] entry against
  2 K flops for K tokens), hidden by the H200's ~206 flops per byte from ~830 tokens per chunk on;
  more tokens per chunk only add logits memory (501 MiB per 1024 tokens).
  The logits stay fp32 here too, not the spec's bf16: measured on the CPU (``[384, 256] @
  [2048, 256]``, bf16 inputs, rms error over one rounding of the float64 result, both gradients),
  fp32 logits are 1.5x against the float64 gradients of fp32 logits and bf16 logits 1.5x against
  those of bf16-rounded logits, but across the two the error is 4.9x at logits of rms 8 (max 40)
  and 12x at rms 25 (max 130): the bf16 spec and the fp32 one differ by far more than one
  rounding at trained-LM logit sizes. fp32 logits keep both routes on the same (more exact)
  function, so the route is a pure speed and memory choice; bf16 logits would halve the chunk's
  memory and traffic (the fast path has them).
- The route (``exact_route``): only the tiles serve per-token upstream gradients
  (``reduction="none"``) or need nothing when neither weight nor bias wants a gradient; otherwise
  the rule picks accumulate when the tile route keeps the dlogits of fewer than half of the
  tokens (``2 K < N``: the tile route's 8NHV - 2KHV is then above 7NHV) and its chunks hold
  ``ACCUMULATE_MIN_CHUNK_ROWS`` tokens (768: V up to ~175k; with fewer, the accumulator's traffic
  shows). With bf16 weights K is about 7H/8 (at H <= 2560 about 3H/4: the tile route's forward
  chunks hold at least 256 tokens), so accumulate from N > ~1.75H on: N=8192 at H=2048 and at
  H=4096, tiles at N=2048 for both and for Gemma's 256k vocabularies. The environment variable
  ``LIGER_FLCE_EXACT_ROUTE`` (``auto``, the default; ``accumulate``; ``tiles``) overrides the rule
  where both routes apply (the public signatures stay Liger 0.8.5's); benchmarks/bench_multigpu.py's
  ``ours-accumulate`` and ``ours-tiles`` providers set it.

The tile route, measured on one H200 (2026-11-29, N=8192, H=4096, V=128256, bf16;
benchmarks/NOTES.md, "Fused linear cross-entropy: exact and lean", and
benchmarks/results/h200/flce_exact.md), one run:
54.5 ms fwd+bwd against Liger 0.8.5's 56.5 ms (nothing kept: 58.5 ms; 6NHV at the measured
matmul rate: 37.6 ms), peak extra memory 1130 MiB (the bf16 weight gradient 1002 + fp32 input
gradient 128 in the forward; weight gradient + input gradient 64 + one 64 MiB fp32 tile in the
backward; Liger: 1129), gradient errors 1.00x one rounding of the float64 result (rms; Liger's
weight gradient: 1.21x, 2.1x in the max). At N=2048: 11.8 ms (nothing kept 15.6, Liger 45.8).
What remains above the flops at that rate (~45 ms) is the fp32 logits' trips through memory.

**Fast** (``ce_mode="fast"``, or any ``accum_dtype``): the token-chunk loop around the
cross-entropy kernel, as Liger Kernel 0.8.5 does: per chunk of ``CHUNK_BUDGET_BYTES`` of logits,
``logits = x_c @ W.T`` in the input dtype, the cross-entropy kernel writes ``dlogits`` over them,
``grad_x_c = dlogits @ W`` and ``grad_W += dlogits.T @ x_c`` into a buffer of ``accum_dtype``
(None: the weight's dtype, Liger's default). 6NHV, but a bf16 weight gradient then carries one
rounding per chunk (measured, CPU emulation of [8192, 128] over 16384 tokens, max error relative
to the largest entry: 0.31% for one matmul, 1.1% over 5 chunks, 4.4% over 62);
``accum_dtype=torch.float32`` avoids that for a transient fp32 ``[V, H]`` buffer. On the H200 at
the shape above: 40.4-41.0 ms (1.09-1.10x the measured 6NHV floor), 1568 MiB, weight gradient
1.17x one rounding (rms); with ``accum_dtype=torch.float32`` 42.5-43.0 ms, 3571 MiB. N=2048:
9.9 ms.

Loss, log-sum-exp and softmax are fp32 on both paths; the loss outputs come back in the input's
dtype, as ``F.cross_entropy(F.linear(x, W, b), y)`` returns them (cast once at the end).
"""

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from liger_kernel.ops.cross_entropy import (
    CEOptions,
    RemembersGradMode,
    caller_grad_mode,
    ce_rows_launch,
    check_target,
    cross_entropy_core,
    finish_logsumexp,
    label_stats,
    mark_extras_non_differentiable,
    one_grad_per_argument,
    online_logsumexp_step,
    raise_if_bad_labels,
    reduce_outputs,
    reference_forward,
    row_outputs,
    scale_by_upstream,
    softcapped,
)
from liger_kernel.ops.utils import (
    cdiv,
    check_float,
    check_same_device,
    check_same_dtype,
    fallback_backward,
    is_zero3_partitioned,
    next_power_of_2,
)
from liger_kernel.utils import use_triton

# Fast path: bytes of one chunk's logits (their gradient is written over them). Measured on H100
# at N=8192, H=4096, V=128256 bf16 (bf16 accumulation; peak includes the 1.05 GB weight
# gradient): 448 MiB -> 5 chunks, 42.6 ms, 1473 MB; 576 MiB -> 4 chunks, 40.4 ms, 1567 MB;
# 1100 MiB -> 40.3 ms, 2068 MB. 576 MiB is the knee.
CHUNK_BUDGET_BYTES = 576 * 2**20
# Exact path, forward: the fp32 logits of one token chunk (dlogits are written over them): 2048
# tokens of a 128k vocabulary, 1002 MiB beside the 128 MiB fp32 input gradient. With kept dlogits
# the chunks lie in the weight gradient's buffer (at most its size).
EXACT_ROWS_BUDGET_BYTES = 1024 * 2**20
# Exact path, backward: the fp32 logits of one vocabulary tile for all tokens (2048 columns at
# 8192 tokens) beside the weight and input gradients: 1002 + 64 + 64 = 1130 MiB. Measured on H200
# at N=8192 (fwd+bwd): tiles of 1024 / 1536 / 2048 / 2304 / 2432 columns 57.9 / 58.3 / 57.6 /
# 57.9 / 58.9 ms; forward chunks of 1024 or 2048 tokens within 0.3 ms. Running the memory-bound
# steps on a side stream beside the next matmul (two buffer sets of half the size) was slower
# (58.7 ms vs 57.6): the matmuls leave it no room.
EXACT_TILE_BUDGET_BYTES = 64 * 2**20
# ... halved for a head DeepSpeed ZeRO-3 partitions (``tile_budget``): there the backward runs with
# the head re-gathered beside the weight gradient, its step's memory peak (2x H200, issue 16's
# workload: 15.7016 GiB against Liger 0.8.5's 15.7001 with 64 MiB tiles).
# Exact path with a weight gradient: the share of the weight gradient's buffer that holds the fp32
# logits of one chunk of the tokens whose dlogits the rest of it keeps (bf16: 1/8 of it is H/16
# tokens, 256 at H=4096, beside the dlogits of 7H/8 tokens, 3584). 0 keeps none. Measured on H200
# at N=8192 (fwd+bwd, before the matmul's alpha replaced an fp32 tile and a scaling pass): 1/4
# (3072 kept) 56.2 ms, 1/8 56.0, 1/16 (3840) 59.1 ms and 1194 MiB (the bf16 input gradient no
# longer fits in the buffer's free head); nothing kept 57.4.
EXACT_KEPT_CHUNK_SHARE = 1 / 8
# ... but never fewer than this many tokens per chunk (up to half of the buffer): at H <= 2560 the
# share is 128 tokens, whose forward runs 2.3x slower than 256-token chunks (H200, H=2048,
# V=128256, N=2048: forward 11.4 ms at 128, 4.9 at 256 and 4.3 with 2048-token chunks kept apart).
KEPT_CHUNK_MIN_ROWS = 256
# Exact path, accumulate route: the fp32 logits of one token chunk. 1024 tokens of a 128k vocabulary
# (501 MiB, beside the 1002 MiB fp32 accumulator at H=2048): each chunk's accumulating matmul
# reads and writes the [V, H] fp32 accumulator once (2 GB at H=2048), which the H200's matmul
# rate hides once a chunk has ~830 tokens (2 K flops per 8 bytes of it against ~206 flops per
# byte); fewer tokens per chunk turn the weight-gradient matmuls memory-bound, more cost memory.
ACCUMULATE_ROWS_BUDGET_BYTES = 512 * 2**20
# ... and the route only where that budget holds this many tokens (or all of them): each chunk
# reads and writes the accumulator. Measured on H200 (accumulate vs tiles, ms and MiB): 1024-token
# chunks (V=128256, Llama-3.2-1B, N=16384) 53.4 / 1635 vs 66.5 / 695; 768 (V=151936, Qwen2.5-1.5B,
# N=8192) 27.8 / 1387 vs 32.9 / 534 (its training step 50.5k vs 48.8k tokens/s); 640 (V=201088,
# GPT-OSS-20B, N=8192) 65.1 / 2791 vs 66.0 / 1214: even, for 1.5 GiB; 512 (V=256000, Gemma-2-2B,
# N=4096) 37.6 / 2788 vs 35.0 / 1208; (V=262144, Gemma-3-4B) 40.0 / 3112 vs 37.3 / 1364.
ACCUMULATE_MIN_CHUNK_ROWS = 768
# Every budget above is multiplied by the ``chunk_mem_const`` argument.

# The exact path's route override (``exact_route``): "auto" (the default), "accumulate", "tiles".
EXACT_ROUTE_ENV = "LIGER_FLCE_EXACT_ROUTE"
EXACT_ROUTES = ("auto", "accumulate", "tiles")

# Chunk sizes are a multiple of this (tensor-core friendly matmul shapes).
CHUNK_ALIGN = 128

CE_MODES = ("exact", "fast")
CE_IMPLS = ("triton", "torch")


def split_size(total: int, item_bytes: int, budget: float) -> int:
    """Items per chunk when ``total`` items of ``item_bytes`` each are split to fit ``budget``
    bytes: as many as fit, balanced so that the chunks are near-equal, 128-aligned when possible."""
    total = max(int(total), 1)
    limit = max(1, int(budget // max(1, item_bytes)))
    if limit >= CHUNK_ALIGN:
        limit -= limit % CHUNK_ALIGN
    size = cdiv(total, cdiv(total, limit))
    if limit >= CHUNK_ALIGN:
        size = min(cdiv(size, CHUNK_ALIGN) * CHUNK_ALIGN, limit, total)
    return size


def flat_view(buf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous ``[rows, cols]`` view of the front of a flat buffer (a matmul's ``out=``)."""
    return buf[: rows * cols].view(rows, cols)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _row_stats_kernel(
    z_ptr,  # [R, V] raw logits (fp32, or the input dtype; SOFTCAP: capped here), unit column stride
    stride_z,
    y_ptr,  # [R] labels, in range (0 at ignored tokens)
    w_ptr,  # [V] fp32 class weights (HAS_WEIGHT)
    lse_ptr,  # [R] fp32 out: log-sum-exp
    z_label_ptr,  # [R] fp32 out: the label's logit
    smooth_ptr,  # [R] fp32 out: sum_c w[c] * z[c] (SMOOTHING)
    n_cols,
    softcap,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One row per program: an online per-lane max and sum of exp (one exp per element, lanes
    combined once at the end); -1e30 rather than -inf keeps untouched lanes free of NaN."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -1e30, tl.float32)
    d = tl.zeros([BLOCK], tl.float32)
    smooth = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        mask = cols < n_cols
        z = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        if SOFTCAP:
            capped, _ = softcapped(z, softcap, SOFTCAP)
            z = tl.where(mask, capped, float("-inf"))
        m, d = online_logsumexp_step(z, m, d)
        if SMOOTHING:
            zs = tl.where(mask, z, 0.0)
            if HAS_WEIGHT:
                zs *= tl.load(w_ptr + cols, mask=mask, other=0.0)
            smooth += zs
    tl.store(lse_ptr + row, finish_logsumexp(m, d))
    z_label, _ = softcapped(tl.load(z_row + tl.load(y_ptr + row)).to(tl.float32), softcap, SOFTCAP)
    tl.store(z_label_ptr + row, z_label)
    if SMOOTHING:
        tl.store(smooth_ptr + row, tl.sum(smooth, 0))


@triton.jit
def _round_to_bf16(v):
    """``v`` (fp32) rounded to the nearest bf16 value, ties to even, still as fp32: the cast that
    follows is then exact everywhere (Triton's interpreter truncates fp32 -> bf16 casts, which
    doubles the error; on a GPU this only repeats what the cast does)."""
    u = v.to(tl.int32, bitcast=True)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & -65536
    return u.to(tl.float32, bitcast=True)


@triton.jit
def _softcap_and_round(g, t, SOFTCAP: tl.constexpr, TO_BF16: tl.constexpr):
    """The last steps of both dlogits kernels: ``g`` times the softcap's derivative ``1 - t^2``
    (SOFTCAP; ``t`` from ``softcapped``), rounded as ``_round_to_bf16`` says (TO_BF16)."""
    if SOFTCAP:
        g *= 1.0 - t * t
    if TO_BF16:
        g = _round_to_bf16(g)
    return g


@triton.jit
def _dlogits_kernel(
    z_ptr,  # [R, T] raw logits (fp32, or g's dtype; SOFTCAP: capped here) of columns col0 .. col0 + T
    stride_z,
    g_ptr,  # [R, T] out: dloss/dlogits in the matmul dtype; may be z's own memory (see below)
    stride_g,
    label_ptr,  # [R] label, -1 at ignored tokens
    lse_ptr,  # [R] fp32
    coef_p_ptr,  # [R] fp32: factor of the softmax
    coef_y_ptr,  # [R] fp32: subtracted at the label
    coef_smooth_ptr,  # [R] fp32: times w[c], subtracted everywhere (SMOOTHING)
    w_ptr,  # [V] fp32 class weights (HAS_WEIGHT)
    col0,
    n_cols,
    softcap,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    TO_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``g = coef_p * exp(z - lse) - coef_y * [c == y] - coef_smooth * w[c]`` of the capped logits
    ``z``, times the softcap's derivative. One row per program, its blocks in order, so ``g`` may be
    written over ``z``'s row as 2-byte values (``g`` = the row's first half): block k's output
    lands on fp32 columns [k B / 2, (k + 1) B / 2), all read by blocks <= k; the barrier orders
    every thread's loads of a block before any thread's stores."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    g_row = g_ptr + row * stride_g
    lse = tl.load(lse_ptr + row)
    coef_p = tl.load(coef_p_ptr + row)
    coef_y = tl.load(coef_y_ptr + row)
    label = tl.load(label_ptr + row) - col0
    if SMOOTHING:
        coef_smooth = tl.load(coef_smooth_ptr + row)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        z, t = softcapped(tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32), softcap, SOFTCAP)
        g = coef_p * tl.exp(z - lse)
        g = tl.where(cols == label, g - coef_y, g)
        if SMOOTHING:
            if HAS_WEIGHT:
                g -= coef_smooth * tl.load(w_ptr + col0 + cols, mask=mask, other=0.0)
            else:
                g -= coef_smooth
        g = _softcap_and_round(g, t, SOFTCAP, TO_BF16)
        tl.debug_barrier()
        tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dlogits_grid_kernel(
    z_ptr,  # [n_tok, n_voc] raw fp32 logits (SOFTCAP: capped here) of columns col0 .. col0 + n_voc, any strides
    stride_z_tok,
    stride_z_voc,
    g_ptr,  # [n_tok, n_voc] out: dloss/dlogits in the matmul dtype, any strides; may share z's memory
    stride_g_tok,
    stride_g_voc,
    label_ptr,  # [n_tok] label, -1 at ignored tokens
    lse_ptr,  # [n_tok] fp32
    coef_p_ptr,  # [n_tok] fp32
    coef_y_ptr,  # [n_tok] fp32
    coef_smooth_ptr,  # [n_tok] fp32 (SMOOTHING)
    w_ptr,  # [V] fp32 class weights (HAS_WEIGHT)
    col0,
    n_tok,
    n_voc,
    softcap,
    copy_src_ptr,  # [n_voc, n_copy] (COPY): copied to copy_dst_ptr, both with unit token stride
    stride_copy_src,
    copy_dst_ptr,
    stride_copy_dst,
    n_copy,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    TO_BF16: tl.constexpr,
    COPY: tl.constexpr,
    BLOCK_TOK: tl.constexpr,
    BLOCK_VOC: tl.constexpr,
):
    """``_dlogits_kernel``'s math on [tokens, vocabulary] blocks with any strides, for outputs laid
    out vocabulary-major. One program per ``BLOCK_VOC`` vocabulary entries, its token blocks in
    order: a vocabulary-major ``g`` may be written over a vocabulary-major ``z`` as in
    ``_dlogits_kernel`` (each entry's memory is its program's alone; the barrier orders its
    loads of a block before its stores). ``COPY``: first copies ``n_copy`` items per entry (the
    kept dlogits, beside the ones computed here)."""
    voc = tl.program_id(0) * BLOCK_VOC + tl.arange(0, BLOCK_VOC)
    voc_mask = voc < n_voc
    voc64 = voc.to(tl.int64)
    if COPY:
        for start in range(0, n_copy, BLOCK_TOK):
            tok = (start + tl.arange(0, BLOCK_TOK)).to(tl.int64)
            mask = (tok < n_copy)[:, None] & voc_mask[None, :]
            kept = tl.load(copy_src_ptr + voc64[None, :] * stride_copy_src + tok[:, None], mask=mask)
            tl.store(copy_dst_ptr + voc64[None, :] * stride_copy_dst + tok[:, None], kept, mask=mask)
    if SMOOTHING:
        if HAS_WEIGHT:
            w = tl.load(w_ptr + col0 + voc, mask=voc_mask, other=0.0)
    for start in range(0, n_tok, BLOCK_TOK):
        tok = start + tl.arange(0, BLOCK_TOK)
        tok_mask = tok < n_tok
        tok64 = tok.to(tl.int64)
        mask = tok_mask[:, None] & voc_mask[None, :]
        z = tl.load(z_ptr + tok64[:, None] * stride_z_tok + voc64[None, :] * stride_z_voc, mask=mask, other=0.0)
        z, t = softcapped(z, softcap, SOFTCAP)
        lse = tl.load(lse_ptr + tok, mask=tok_mask, other=0.0)
        coef_p = tl.load(coef_p_ptr + tok, mask=tok_mask, other=0.0)
        coef_y = tl.load(coef_y_ptr + tok, mask=tok_mask, other=0.0)
        label = tl.load(label_ptr + tok, mask=tok_mask, other=-1) - col0
        g = coef_p[:, None] * tl.exp(z - lse[:, None])
        g = tl.where(voc[None, :] == label[:, None], g - coef_y[:, None], g)
        if SMOOTHING:
            coef_smooth = tl.load(coef_smooth_ptr + tok, mask=tok_mask, other=0.0)
            if HAS_WEIGHT:
                g -= coef_smooth[:, None] * w[None, :]
            else:
                g -= coef_smooth[:, None]
        g = _softcap_and_round(g, t, SOFTCAP, TO_BF16)
        tl.debug_barrier()
        tl.store(
            g_ptr + tok64[:, None] * stride_g_tok + voc64[None, :] * stride_g_voc,
            g.to(g_ptr.dtype.element_ty),
            mask=mask,
        )


# ----------------------------------------------------------------------------- exact path


class RowTerms(NamedTuple):
    """Per-token [N] vectors the weight-gradient pass needs: ``lse``, ``label`` (-1 at ignored
    tokens) and the fp32 coefficients of ``_dlogits_kernel``, already scaled for the reduction."""

    lse: torch.Tensor
    label: torch.Tensor
    coef_p: torch.Tensor
    coef_y: torch.Tensor
    coef_smooth: torch.Tensor

    def times(self, g: torch.Tensor) -> "RowTerms":
        """The coefficients times the upstream gradient ``g`` (one value, or one per token)."""
        return self._replace(coef_p=self.coef_p * g, coef_y=self.coef_y * g, coef_smooth=self.coef_smooth * g)


def row_terms(lse, z_label, smooth, y_safe, label, mask, w, wsum, norm, opts: CEOptions, n_vocab):
    """The per-token math of ops/cross_entropy.py's docstring on [n] fp32 vectors: loss and z-loss
    per token, and the ``RowTerms`` of the gradient ``scale * (coef_p * softmax - coef_y * onehot
    - eps / V * w)``, ``scale`` being the token-scaling factor over the mean normalizer."""
    eps = opts.label_smoothing
    nll = lse - z_label
    coef_y = (1.0 - eps) * (torch.ones_like(lse) if w is None else w[y_safe])
    loss = coef_y * nll
    coef_p = coef_y
    if eps > 0:
        total_w = n_vocab if w is None else wsum
        loss = loss + eps / n_vocab * (total_w * lse - smooth)
        coef_p = coef_p + eps / n_vocab * total_w
    z_loss = opts.lse_square_scale * lse * lse
    if opts.lse_square_scale:
        loss = loss + z_loss
        coef_p = coef_p + 2.0 * opts.lse_square_scale * lse
    scale = mask.to(torch.float32)
    if opts.use_token_scaling:
        token_scale = torch.exp(-nll)  # p[y], a constant for the gradient
        loss, z_loss, scale = loss * token_scale, z_loss * token_scale, scale * token_scale
    if opts.reduction == "mean":
        scale = scale / norm
    zero = torch.zeros((), dtype=torch.float32, device=lse.device)
    loss, z_loss = torch.where(mask, loss, zero), torch.where(mask, z_loss, zero)
    terms = RowTerms(lse, label, coef_p * scale, coef_y * scale, eps / n_vocab * scale)
    return loss, z_loss, terms


def mm_fp32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out = a @ b`` with an fp32 ``out`` for bf16/fp16 ``a``, ``b`` (cuBLAS' fp32 accumulator
    written as it is; an fp32 copy of the operands only on CPU)."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    elif out.is_cuda:
        torch.mm(a, b, out_dtype=out.dtype, out=out)
    else:
        torch.mm(a.to(out.dtype), b.to(out.dtype), out=out)


def mm_scaled(a: torch.Tensor, b: torch.Tensor, alpha: float, out: torch.Tensor) -> None:
    """``out = alpha * (a @ b)``, the fp32 accumulator scaled and rounded once to ``out``'s dtype
    (cuBLAS' own alpha; on CPU through an fp32 product)."""
    if out.is_cuda:
        torch.addmm(out, a, b, beta=0, alpha=alpha, out=out)
    else:
        out.copy_(torch.mm(a.to(torch.float32), b.to(torch.float32)).mul_(alpha))


def dlogits_in_place(z, dtype, col0, terms: RowTerms, w, opts: CEOptions) -> torch.Tensor:
    """dloss/dlogits of the raw fp32 logits ``z`` [n, T] (columns ``col0 ..``; softcapped in the kernel) in
    ``dtype``, written over ``z``'s memory: returns the ``[n, T]`` view holding them (row stride
    ``2T`` for 2-byte dtypes)."""
    n_rows, n_cols = z.shape
    out = z.view(dtype)[:, :n_cols]
    if n_rows == 0 or n_cols == 0:
        return out
    block = min(2048, next_power_of_2(n_cols))
    _dlogits_kernel[(n_rows,)](
        z,
        z.stride(0),
        out,
        out.stride(0),
        *dlogits_terms(terms, w, col0),
        n_cols,
        opts.softcap or 1.0,
        **dlogits_flags(out.dtype, w, opts),
        BLOCK=block,
        num_warps=8,
    )
    return out


def dlogits_terms(terms: RowTerms, w, col0: int) -> tuple:
    """The per-token, class-weight and column-offset arguments of both dlogits kernels, in order."""
    return terms.label, terms.lse, terms.coef_p, terms.coef_y, terms.coef_smooth, terms.lse if w is None else w, col0


def dlogits_flags(dtype: torch.dtype, w, opts: CEOptions) -> dict:
    """The compile-time flags of both dlogits kernels for an output of ``dtype``."""
    return dict(
        HAS_WEIGHT=w is not None,
        SMOOTHING=opts.label_smoothing > 0,
        SOFTCAP=opts.softcap is not None,
        TO_BF16=dtype == torch.bfloat16,
    )


def dlogits_grid(z, out, col0, terms: RowTerms, w, opts: CEOptions, copy=None) -> None:
    """``dlogits_in_place``'s math from the fp32 logits ``z`` into ``out``, both ``[tokens, T]``
    views with any strides (``out`` vocabulary-major; it may lie over a vocabulary-major ``z``).
    ``copy``: None, or ``(src, dst)`` ``[T, n]`` views with unit token stride, copied first."""
    n_tok, n_voc = z.shape
    if n_voc == 0 or (n_tok == 0 and copy is None):
        return
    src, dst = (z, z) if copy is None else copy
    block_tok, block_voc = (64, 64) if z.stride(1) == 1 else (512, 8)  # along the contiguous axis
    _dlogits_grid_kernel[(cdiv(n_voc, block_voc),)](
        z,
        z.stride(0),
        z.stride(1),
        out,
        out.stride(0),
        out.stride(1),
        *dlogits_terms(terms, w, col0),
        n_tok,
        n_voc,
        opts.softcap or 1.0,
        src,
        src.stride(0),
        dst,
        dst.stride(0),
        src.shape[1] if copy is not None else 0,
        **dlogits_flags(out.dtype, w, opts),
        COPY=copy is not None,
        BLOCK_TOK=block_tok,
        BLOCK_VOC=block_voc,
        num_warps=8,
    )


def alias(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A flat ``dtype`` tensor over all of a contiguous ``t``'s memory (scratch inside an
    output-to-be). Set from ``t`` itself, never through ``t.untyped_storage()``: a Python storage
    object, once made, holds a second reference to the storage for the tensor's whole life, and
    autograd then sums a gradient for a weight used twice (a head tied to the input embedding)
    into a new [V, H] tensor instead of into this one (1.25 GiB more at Gemma 3's head)."""
    return plain_on(t, dtype, (t.numel() * t.element_size() // dtype.itemsize,))


def plain_on(t: torch.Tensor, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    """A contiguous ``dtype`` tensor of ``shape`` on the memory of ``t``, which starts its storage
    (offset 0: the buffers here are fresh): no view (no ``_base``), and no Python storage object
    (``alias``), so that autograd can keep it as a gradient and sum another one into it in place."""
    return torch.empty(0, dtype=dtype, device=t.device).set_(t, 0, shape)  # no stride: contiguous


class KeptDlogits(NamedTuple):
    """The exact path's weight-gradient buffer ``grad_w`` [V, H] and what it holds until the
    backward fills it: the dlogits of tokens ``[0, rows)`` for an upstream gradient of 1,
    vocabulary-major ``[V, rows]`` in its tail, written by the forward through chunks of
    ``chunk_rows`` tokens whose fp32 logits lie in its head."""

    grad_w: torch.Tensor
    rows: int
    chunk_rows: int

    def dlogits(self) -> torch.Tensor:
        n_vocab = self.grad_w.shape[0]
        return self.grad_w.view(-1)[self.grad_w.numel() - n_vocab * self.rows :].view(n_vocab, self.rows)

    def head(self, dtype: torch.dtype, numel: int):
        """A flat ``dtype`` scratch of ``numel`` items before the kept dlogits, or None."""
        free = (self.grad_w.numel() - self.grad_w.shape[0] * self.rows) * self.grad_w.element_size()
        return alias(self.grad_w, dtype)[:numel] if numel * dtype.itemsize <= free else None


def kept_split(n_rows: int, n_vocab: int, hidden: int, elem: int, share: float) -> tuple[int, int]:
    """``(rows, chunk_rows)`` of ``KeptDlogits`` for a ``[n_vocab, hidden]`` buffer of ``elem``-byte
    items: as many tokens as fit beside one chunk of fp32 logits of ``share`` of the buffer (at
    least ``KEPT_CHUNK_MIN_ROWS`` tokens, or half the buffer; more if fewer tokens are kept); (0, 0)
    if none."""
    row_bytes, buf_bytes = n_vocab * 4, n_vocab * hidden * elem
    if share <= 0:
        return 0, 0
    floor = min(min(n_rows, KEPT_CHUNK_MIN_ROWS) * row_bytes, buf_bytes / 2)
    chunk = split_size(n_rows, row_bytes, max(share * buf_bytes, floor))
    rows = min(n_rows, (buf_bytes - chunk * row_bytes) // (n_vocab * elem))
    if rows <= 0:
        return 0, 0
    return rows, split_size(rows, row_bytes, buf_bytes - rows * n_vocab * elem)


def plan_keep(x, weight, need_w: bool, per_row: bool, share: float):
    """The ``KeptDlogits`` for ``token_pass``, or None: only with a weight gradient and one upstream
    gradient for all tokens (it scales the kept dlogits' matmul), and only if some tokens fit."""
    if not need_w or per_row or x.shape[0] == 0:
        return None
    rows, chunk_rows = kept_split(x.shape[0], weight.shape[0], weight.shape[1], weight.element_size(), share)
    return KeptDlogits(torch.empty_like(weight), rows, chunk_rows) if rows else None


class SummedGrads:
    """The accumulate route's weight and bias gradients for an upstream gradient of 1, summed over
    the forward's token chunks: ``dlogits.T @ x_c`` into a ``WeightGradAccumulator`` (fp32, scaled
    by the upstream gradient as it is rounded in place at the end: its memory is the accumulator
    alone, and no pass of its own for the scaling), the bias's in fp32."""

    def __init__(self, weight: torch.Tensor, bias, need_w: bool, need_b: bool):
        from liger_kernel.ops.head_grad import WeightGradAccumulator  # it imports this module

        self.weight = WeightGradAccumulator(weight) if need_w else None
        self.bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        self.bias_dtype = None if bias is None else bias.dtype

    def add(self, dlogits: torch.Tensor, x_c: torch.Tensor) -> None:
        if self.weight is not None:
            self.weight.add(dlogits, x_c)
        if self.bias is not None:
            self.bias += dlogits.sum(0, dtype=torch.float32)

    def finish(self, g: torch.Tensor) -> tuple:
        """``(grad_W, grad_b)`` times the scalar upstream gradient ``g``, each rounded once."""
        grad_w = grad_b = None
        if self.weight is not None:
            grad_w = self.weight.finish(g.reshape(1))
        if self.bias is not None:
            grad_b = self.bias.mul_(g).to(self.bias_dtype)
        return grad_w, grad_b


def plan_exact(x, weight, bias, needs, per_row: bool, chunk_mem_const: float):
    """What the exact forward prepares for the weight and bias gradients: ``SummedGrads`` (the
    accumulate route), ``KeptDlogits`` or None (the tile route), and the forward's chunk budget."""
    need_w, need_b = needs[1], needs[2]
    share = EXACT_KEPT_CHUNK_SHARE * chunk_mem_const
    rows_budget = ACCUMULATE_ROWS_BUDGET_BYTES * chunk_mem_const
    if exact_route(x.shape[0], weight, need_w, need_b, per_row, share, rows_budget) == "accumulate":
        return SummedGrads(weight, bias, need_w, need_b), rows_budget
    return plan_keep(x, weight, need_w, per_row, share), EXACT_ROWS_BUDGET_BYTES * chunk_mem_const


def exact_route(
    n_rows: int, weight, need_w: bool, need_b: bool, per_row: bool, share: float, rows_budget: float | None = None
) -> str:
    """``"accumulate"`` or ``"tiles"``: ``LIGER_FLCE_EXACT_ROUTE`` when set to one of them, else
    (``"auto"``) the rule of the module docstring: accumulate when the tile route would keep the
    dlogits of fewer than half of the tokens (``kept_split``), i.e. compute more than 7NHV, and
    the accumulate route's chunks (``rows_budget`` bytes of fp32 logits, by default
    ``ACCUMULATE_ROWS_BUDGET_BYTES``) hold ``ACCUMULATE_MIN_CHUNK_ROWS`` tokens or all. Only
    the tile route serves per-token upstream gradients (``reduction="none"``) and needs nothing
    more when neither the weight nor the bias wants a gradient. A head that DeepSpeed ZeRO-3
    partitions takes the tile route too: ZeRO-3 is chosen to save memory, and there the accumulate
    route's extra ~1 GiB is the whole step's peak (2x H200, issue 16's workload: 16.65 GiB at 1.18x
    Liger 0.8.5's tokens/s vs Liger's 15.70; the tile route's peak equals Liger's)."""
    choice = os.environ.get(EXACT_ROUTE_ENV) or "auto"
    if choice not in EXACT_ROUTES:
        raise ValueError(f"{EXACT_ROUTE_ENV} must be one of {', '.join(EXACT_ROUTES)}; got {choice!r}.")
    if per_row or not (need_w or need_b) or choice == "tiles":
        return "tiles"
    if choice == "accumulate":
        return "accumulate"
    if not need_w or is_zero3_partitioned(weight):
        return "tiles"
    rows_budget = ACCUMULATE_ROWS_BUDGET_BYTES if rows_budget is None else rows_budget
    if split_size(n_rows, 4 * weight.shape[0], rows_budget) < min(n_rows, ACCUMULATE_MIN_CHUNK_ROWS):
        return "tiles"
    kept, _ = kept_split(n_rows, weight.shape[0], weight.shape[1], weight.element_size(), share)
    return "accumulate" if 2 * kept < n_rows else "tiles"


def token_pass(x, weight, target, bias, ce_weight, opts: CEOptions, need_x: bool, budget: float, held=None):
    """The exact path's forward over token chunks. ``x`` [N, H] contiguous. Returns the 4-tuple
    (in fp32), the ``RowTerms`` for the weight-gradient pass, the class weights in fp32 and the
    fp32 input gradient for an upstream gradient of 1 (None unless ``need_x``). ``held``
    (``plan_exact``): a ``KeptDlogits`` (the chunks' logits lie in its buffer and it keeps its
    tokens' dlogits), or ``SummedGrads`` (each chunk's dlogits are added to it)."""
    n_rows, hidden = x.shape
    n_vocab = weight.shape[0]
    y = target.reshape(-1)
    w, mask, norm, wsum = label_stats(y, ce_weight, opts.ignore_index, n_vocab)
    in_range = (y >= 0) & (y < n_vocab)
    bad = (mask & ~in_range).any()
    y_safe = torch.where(mask & in_range, y, 0)
    label = torch.where(mask, y, -1)
    stats = torch.empty(3, n_rows, dtype=torch.float32, device=x.device)
    lse, z_label, smooth = stats
    want_pred = opts.return_token_accuracy or opts.return_predicted_tokens
    pred = torch.empty(n_rows, dtype=torch.int64, device=x.device) if want_pred else None
    grad_x = torch.empty(n_rows, hidden, dtype=torch.float32, device=x.device) if need_x else None

    def logits_and_stats(start, end, buf):
        z = flat_view(buf, end - start, n_vocab)
        mm_fp32(x[start:end], weight.t(), z)
        if bias is not None:
            z += bias
        if pred is not None:  # on the raw logits: softcap is monotone, and may tie where tanh saturates
            torch.argmax(z, 1, out=pred[start:end])
        _row_stats_kernel[(end - start,)](
            z,
            z.stride(0),
            y_safe[start:end],
            lse if w is None else w,
            lse[start:end],
            z_label[start:end],
            smooth[start:end],
            n_vocab,
            opts.softcap or 1.0,
            HAS_WEIGHT=w is not None,
            SMOOTHING=opts.label_smoothing > 0,
            SOFTCAP=opts.softcap is not None,
            BLOCK=min(4096, next_power_of_2(n_vocab)),
            num_warps=8,
        )
        part = slice(start, end)
        args = lse[part], z_label[part], smooth[part], y_safe[part], label[part], mask[part], w, wsum, norm, opts
        return z, row_terms(*args, n_vocab)[2]

    keep = held if isinstance(held, KeptDlogits) else None
    sums = held if isinstance(held, SummedGrads) else None
    kept = 0 if keep is None else keep.rows
    if keep is None:
        rows = split_size(n_rows, n_vocab * 4, budget)
        buf = torch.empty(rows * n_vocab, dtype=torch.float32, device=x.device)
    else:
        buf = alias(keep.grad_w, torch.float32)
        rows = split_size(n_rows - kept, n_vocab * 4, min(budget, buf.numel() * 4))
    for start in range(kept, n_rows, rows):
        z, terms = logits_and_stats(start, min(start + rows, n_rows), buf)
        if need_x or sums is not None:
            dlogits = dlogits_in_place(z, x.dtype, 0, terms, w, opts)
        if need_x:
            mm_fp32(dlogits, weight, grad_x[start : start + z.shape[0]])
        if sums is not None:
            sums.add(dlogits, x[start : start + z.shape[0]])
    if kept:
        dlogits = keep.dlogits()
        for start in range(0, kept, keep.chunk_rows):
            end = min(start + keep.chunk_rows, kept)
            z, terms = logits_and_stats(start, end, buf)
            dlogits_grid(z, dlogits[:, start:end].t(), 0, terms, w, opts)
        if need_x:
            mm_fp32(dlogits.t(), weight, grad_x[:kept])
    raise_if_bad_labels(bad, n_vocab, opts.ignore_index)
    loss_rows, z_rows, terms = row_terms(lse, z_label, smooth, y_safe, label, mask, w, wsum, norm, opts, n_vocab)
    if pred is not None:
        pred = torch.where(mask, pred, opts.ignore_index)
    outputs = reduce_outputs(loss_rows, z_rows if opts.return_z_loss else None, pred, y, mask, norm, opts, target.shape)
    return outputs, terms, w, grad_x


def vocab_pass(x, weight, bias, terms: RowTerms, w, opts: CEOptions, need_w: bool, need_b: bool, budget: float):
    """The exact path's weight and bias gradients over vocabulary tiles: ``grad_W[tile] =
    dlogits[:, tile].T @ x``, each tile contracted over every token in one matmul and written
    once. ``terms`` already carry the upstream gradient."""
    n_rows = x.shape[0]
    n_vocab = weight.shape[0]
    grad_w = torch.empty_like(weight) if need_w else None
    grad_b = torch.empty(n_vocab, dtype=torch.float32, device=x.device) if need_b else None
    if n_rows == 0:
        return tuple(None if g is None else g.zero_().to(p.dtype) for g, p in ((grad_w, weight), (grad_b, bias)))
    cols = split_size(n_vocab, n_rows * 4, budget)
    buf = torch.empty(n_rows * cols, dtype=torch.float32, device=x.device)
    for start in range(0, n_vocab, cols):
        end = min(start + cols, n_vocab)
        z = flat_view(buf, n_rows, end - start)
        mm_fp32(x, weight[start:end].t(), z)
        if bias is not None:
            z += bias[start:end]
        g = dlogits_in_place(z, x.dtype, start, terms, w, opts)
        if need_w:
            torch.mm(g.t(), x, out=grad_w[start:end])
        if need_b:
            torch.sum(g, 0, dtype=torch.float32, out=grad_b[start:end])
    return grad_w, None if grad_b is None else grad_b.to(bias.dtype)


def kept_vocab_pass(x, weight, bias, terms: RowTerms, w, opts: CEOptions, keep: KeptDlogits, g, need_b, budget):
    """The weight and bias gradients from what ``token_pass`` kept, for the scalar upstream
    gradient ``g``. Per vocabulary tile: the kept tokens' dlogits (copied) and the others'
    (recomputed vocabulary-major over their fp32 logits) form one ``[T, N]`` operand;
    ``grad_W[tile] = g * (operand @ x)``, the matmul's fp32 accumulator scaled by its ``alpha``
    and rounded once, written into the buffer where the kept dlogits are no longer needed (the
    tile's own were copied, or are read by a matmul whose output does not overlap them). ``terms``
    for an upstream gradient of 1, as the kept dlogits are; ``g`` is read on the host (one sync)."""
    n_rows, hidden = x.shape
    n_vocab = weight.shape[0]
    kept, grad_w, dlogits = keep.rows, keep.grad_w, keep.dlogits()
    alpha = float(g)
    # fp32 row of a tile: the logits of tokens kept.. at their own columns, then the operand over
    # them, in the first n_rows items of x's dtype
    cols = split_size(n_vocab, n_rows * 4, budget)
    buf = torch.empty(cols * n_rows, dtype=torch.float32, device=x.device)
    grad_b = torch.empty(n_vocab, dtype=torch.float32, device=x.device) if need_b else None
    rest = slice(kept, n_rows)
    rest_terms = RowTerms(*(t[rest] for t in terms))
    for start in range(0, n_vocab, cols):
        end = min(start + cols, n_vocab)
        rows = flat_view(buf, end - start, n_rows)
        operand = rows.view(x.dtype)[:, :n_rows]
        if kept < n_rows:
            z = rows[:, kept:]
            mm_fp32(weight[start:end], x[rest].t(), z)
            if bias is not None:
                z += bias[start:end, None]
            copy = (dlogits[start:end], operand[:, :kept])
            dlogits_grid(z.t(), operand[:, kept:].t(), start, rest_terms, w, opts, copy)
        elif end * hidden > n_vocab * (hidden - kept) + start * kept:  # the output would overlap them
            operand.copy_(dlogits[start:end])
        else:
            operand = dlogits[start:end]
        if need_b:
            torch.sum(operand, 1, dtype=torch.float32, out=grad_b[start:end])
        mm_scaled(operand, x, alpha, grad_w[start:end])
    return grad_w, None if grad_b is None else grad_b.mul_(alpha).to(bias.dtype)


def tile_budget(weight: torch.Tensor, chunk_mem_const: float) -> float:
    """The exact path's vocabulary-tile budget for ``weight`` (``EXACT_TILE_BUDGET_BYTES``)."""
    return EXACT_TILE_BUDGET_BYTES * chunk_mem_const / (2 if is_zero3_partitioned(weight) else 1)


def exact_grads(x, weight, bias, terms, w, grad_x32_box, dtype, opts, g, per_row, need_w, need_b, budget, held_box=()):
    """All gradients of the exact path for the upstream gradient ``g`` (fp32; one value, or one
    per token when ``per_row``). ``grad_x32_box``: an empty list, or one holding the forward's
    fp32 input gradient, taken out, scaled in place and rounded once to ``dtype`` before the
    weight gradient exists (so the two never coexist). ``held_box``: empty, or holding what the
    forward prepared (``plan_exact``): ``SummedGrads`` (its gradients are scaled and rounded), or
    ``KeptDlogits`` (then the weight gradient exists already: the input gradient is rounded into
    its free head first, and copied out once the fp32 one is freed)."""
    held = held_box.pop() if held_box else None
    keep = held if isinstance(held, KeptDlogits) else None
    grad_x = None
    if grad_x32_box:
        grad_x32 = grad_x32_box.pop()
        shape = grad_x32.shape
        stage = None if keep is None or per_row else keep.head(dtype, grad_x32.numel())
        if stage is None:
            grad_x = grad_x32.mul_(g[:, None] if per_row else g).to(dtype)
        else:
            torch.mul(grad_x32, g, out=stage.view(shape))
        del grad_x32
        if stage is not None:
            grad_x = stage.view(shape).clone()
    if isinstance(held, SummedGrads):
        return grad_x, *held.finish(g)
    if keep is not None:
        return grad_x, *kept_vocab_pass(x, weight, bias, terms, w, opts, keep, g, need_b, budget)
    grad_w, grad_b = None, None
    if need_w or need_b:
        grad_w, grad_b = vocab_pass(x, weight, bias, terms.times(g), w, opts, need_w, need_b, budget)
    return grad_x, grad_w, grad_b


# ----------------------------------------------------------------------------- fast path


def accumulate_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """``out = a @ b`` (``first``) or ``out += a @ b``, with ``out`` possibly wider than ``a``, ``b``
    (bf16 products accumulated in fp32 without an fp32 copy of the operands on CUDA)."""
    if out.dtype != a.dtype and not (out.is_cuda and out.dtype == torch.float32):
        a, b = a.to(out.dtype), b.to(out.dtype)
    if out.dtype == a.dtype and first:
        torch.mm(a, b, out=out)
    elif out.dtype == a.dtype:
        out.addmm_(a, b)
    elif first:
        torch.mm(a, b, out_dtype=out.dtype, out=out)
    else:
        torch.addmm(out, a, b, out_dtype=out.dtype, out=out)


def flce_chunks(
    x, weight, target, bias, ce_weight, opts: CEOptions, needs=(False, False, False), row_scale=None, budget=None
):
    """The fast path's chunk loop. ``x`` [N, H] contiguous, ``target`` N labels of any shape.
    ``needs`` says which of the input, weight and bias gradients to compute; ``row_scale`` [N]
    multiplies each token's gradient (the upstream gradient of ``reduction="none"``). Returns
    the 4-tuple and the 3 gradients."""
    n_rows, hidden = x.shape
    n_cols = weight.shape[0]
    y = target.reshape(-1)
    w, mask, norm, wsum = label_stats(y, ce_weight, opts.ignore_index, n_cols)
    loss_rows, z_rows, pred, bad = row_outputs(n_rows, x, opts)
    need_x, need_w, need_b = needs
    need_b = need_b and bias is not None
    grad_dtype = opts.accum_dtype or weight.dtype
    grad_x = torch.empty_like(x) if need_x else None
    grad_w = torch.empty(weight.shape, dtype=grad_dtype, device=x.device) if need_w else None
    grad_b = torch.empty(n_cols, dtype=grad_dtype, device=x.device) if need_b else None
    write_grad = need_x or need_w or need_b

    rows = split_size(n_rows, n_cols * x.element_size(), CHUNK_BUDGET_BYTES if budget is None else budget)
    logits_buf = torch.empty(rows, n_cols, dtype=x.dtype, device=x.device)
    w_t = weight.t()
    for start in range(0, n_rows, rows):
        end = min(start + rows, n_rows)
        x_c = x[start:end]
        logits = logits_buf[: end - start]
        if bias is None:
            torch.mm(x_c, w_t, out=logits)
        else:
            torch.addmm(bias, x_c, w_t, out=logits)
        ce_rows_launch(
            logits,
            y[start:end],
            w,
            norm,
            wsum,
            loss_rows[start:end],
            None if z_rows is None else z_rows[start:end],
            None if pred is None else pred[start:end],
            bad,
            opts,
            write_grad,
            row_scale=None if row_scale is None else row_scale[start:end],
        )
        if need_x:
            torch.mm(logits, weight, out=grad_x[start:end])
        if need_w:
            accumulate_mm(grad_w, logits.t(), x_c, first=start == 0)
        if need_b:
            if start == 0:
                torch.sum(logits, 0, dtype=grad_dtype, out=grad_b)
            else:
                grad_b += logits.sum(0, dtype=grad_dtype)
    del logits_buf
    if n_rows == 0:  # no chunk ran: the gradients are zero
        for g in (grad_x, grad_w, grad_b):
            if g is not None:
                g.zero_()
    # Back to the parameters' dtypes once, after the chunk buffer is freed (lower peak).
    if grad_w is not None and grad_w.dtype != weight.dtype:
        grad_w = grad_w.to(weight.dtype)
    if grad_b is not None and grad_b.dtype != bias.dtype:
        grad_b = grad_b.to(bias.dtype)
    raise_if_bad_labels(bad, n_cols, opts.ignore_index)
    outputs = reduce_outputs(loss_rows, z_rows, pred, y, mask, norm, opts, target.shape)
    return outputs, (grad_x, grad_w, grad_b)


# ----------------------------------------------------------------------------- reference


def fused_linear_cross_entropy_reference(
    _input,
    weight,
    target,
    bias=None,
    ce_weight=None,
    ignore_index=-100,
    lse_square_scale=0.0,
    label_smoothing=0.0,
    reduction="mean",
    softcap=None,
    return_z_loss=False,
    accum_dtype=None,
    use_token_scaling=False,
    return_token_accuracy=False,
    return_predicted_tokens=False,
):
    """The spec and the CPU fallback: the logits ``_input @ weight.T + bias`` in the input dtype
    (as a Hugging Face ``lm_head`` computes them), then the cross-entropy of
    ``ops/cross_entropy.py`` on them upcast to fp32; loss outputs in the input's dtype.
    ``accum_dtype`` only affects the kernels."""
    opts = CEOptions(
        ignore_index,
        lse_square_scale,
        label_smoothing,
        reduction,
        softcap,
        return_z_loss,
        return_token_accuracy,
        return_predicted_tokens,
        use_token_scaling,
        accum_dtype,
    )
    return fused_linear_cross_entropy_core(_input, weight, target, bias, ce_weight, opts)


def fused_linear_cross_entropy_core(_input, weight, target, bias, ce_weight, opts: CEOptions, loss_dtype=None):
    """The reference's math with the options as one record; losses in ``loss_dtype`` (default: the
    input's)."""
    outputs = cross_entropy_core(torch.nn.functional.linear(_input, weight, bias), target, ce_weight, opts)
    return in_input_dtype(outputs, loss_dtype or _input.dtype)


def in_input_dtype(outputs, dtype):
    """The 4-tuple with the loss and z-loss in ``dtype``, as PyTorch's cross-entropy of logits
    in that dtype returns them (computed in fp32, cast once here)."""
    loss, z_loss, accuracy, pred = outputs
    return loss.to(dtype), None if z_loss is None else z_loss.to(dtype), accuracy, pred


# ----------------------------------------------------------------------------- checks


def check_flce_inputs(_input, weight, target, bias, ce_weight, accum_dtype):
    check_float("input", _input)
    check_float("weight", weight)
    if bias is not None:
        check_float("bias", bias)
    check_same_dtype(input=_input, weight=weight, bias=bias)
    if weight.dim() != 2 or _input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"`weight` must be [V, H] with H = input.shape[-1] = {_input.shape[-1]}; got {tuple(weight.shape)}."
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"`bias` must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if accum_dtype is not None and accum_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(
            f"`accum_dtype` must be None, torch.float32, torch.bfloat16 or torch.float16; got {accum_dtype}."
        )
    n_rows = _input.numel() // max(_input.shape[-1], 1)
    check_target(target, n_rows, ce_weight, weight.shape[0], {"input": _input, "weight": weight, "bias": bias})
    check_same_device(input=_input, weight=weight)


def resolve_mode(ce_impl, ce_mode, accum_dtype, chunk_mem_const) -> str:
    """``"torch"`` (the reference), ``"exact"`` or ``"fast"`` from the trailing arguments:
    ``ce_impl`` None/"triton" (the kernels) or "torch"; ``ce_mode`` None ("exact", or "fast" when
    an ``accum_dtype`` is given), "exact" or "fast"; ``chunk_mem_const`` > 0 multiplies every
    chunk budget (larger chunks: fewer, larger matmuls for more memory)."""
    if ce_impl is not None and ce_impl not in CE_IMPLS:
        raise ValueError(f"`ce_impl` must be None, 'triton' or 'torch'; got {ce_impl!r}.")
    if ce_mode is not None and ce_mode not in CE_MODES:
        raise ValueError(f"`ce_mode` must be None, 'exact' or 'fast'; got {ce_mode!r}.")
    if isinstance(chunk_mem_const, bool) or not isinstance(chunk_mem_const, (int, float)) or not chunk_mem_const > 0:
        raise ValueError(f"`chunk_mem_const` must be a number > 0 (a chunk budget factor); got {chunk_mem_const!r}.")
    if ce_mode == "exact" and accum_dtype not in (None, torch.float32):
        raise ValueError(
            f"`accum_dtype={accum_dtype}` is the fast path's accumulation: pass ce_mode='fast' (or "
            "ce_mode=None), or drop accum_dtype for the exact path."
        )
    if ce_impl == "torch":
        return "torch"
    return ce_mode or ("exact" if accum_dtype is None else "fast")


def make_options(
    ignore_index,
    lse_square_scale,
    label_smoothing,
    reduction,
    softcap,
    return_z_loss,
    accum_dtype,
    use_token_scaling,
    return_token_accuracy,
    return_predicted_tokens,
) -> CEOptions:
    return CEOptions(
        ignore_index,
        lse_square_scale,
        label_smoothing,
        reduction,
        softcap,
        return_z_loss,
        return_token_accuracy,
        return_predicted_tokens,
        use_token_scaling,
        accum_dtype,
    ).check()


# ----------------------------------------------------------------------------- functional API


def fused_linear_cross_entropy_forward(
    _input,
    weight,
    target,
    ce_weight=None,
    bias=None,
    ignore_index=-100,
    lse_square_scale=0.0,
    label_smoothing=0.0,
    reduction="mean",
    softcap=None,
    return_z_loss=False,
    accum_dtype=None,
    use_token_scaling=False,
    return_token_accuracy=False,
    return_predicted_tokens=False,
    ce_impl=None,
    ce_mode=None,
    token_grad_output=None,
    compute_gradients=None,
    weight_requires_grad=None,
    chunk_mem_const=1,
    loss_dtype=None,
):
    """Loss and gradients in one call, without autograd: ``(loss, z_loss, token_accuracy,
    predicted_tokens, grad_input, grad_weight, grad_bias)``, the gradients for an upstream
    gradient of 1 (``token_grad_output`` [BT]: one per token instead, for ``reduction="none"``)
    and in the parameters' dtypes. ``compute_gradients`` None: when grad mode is on and input,
    weight or bias requires grad; then ``grad_input`` always, ``grad_bias`` with a bias and
    ``grad_weight`` unless ``weight_requires_grad`` is False (None: ``weight.requires_grad``, or
    True when no tensor requires grad). Scale them by a scalar upstream gradient with
    ``fused_linear_cross_entropy_backward``. Other arguments as ``LigerFusedLinearCrossEntropyFunction``
    (``loss_dtype`` too).
    """
    check_flce_inputs(_input, weight, target, bias, ce_weight, accum_dtype)
    opts = make_options(
        ignore_index, lse_square_scale, label_smoothing, reduction, softcap, return_z_loss, accum_dtype,
        use_token_scaling, return_token_accuracy, return_predicted_tokens,
    )  # fmt: skip
    mode = resolve_mode(ce_impl, ce_mode, accum_dtype, chunk_mem_const)
    any_grad = any(t is not None and t.requires_grad for t in (_input, weight, bias))
    if compute_gradients is None:
        compute_gradients = torch.is_grad_enabled() and any_grad
    if weight_requires_grad is None:
        weight_requires_grad = weight.requires_grad or not any_grad
    compute = bool(compute_gradients)
    needs = (compute, compute and bool(weight_requires_grad), compute and bias is not None)
    with torch.no_grad():
        if mode == "torch" or not use_triton(_input) or _input.dtype == torch.float64:
            return reference_with_grads(
                _input, weight, target, bias, ce_weight, opts, needs, token_grad_output, loss_dtype
            )
        x = _input.reshape(-1, _input.shape[-1]).contiguous()
        tensors = (x, weight.contiguous(), target, None if bias is None else bias.contiguous())
        g = None if token_grad_output is None else token_grad_output.reshape(-1).to(torch.float32)
        if mode == "fast":
            outputs, grads = flce_chunks(
                *tensors, ce_weight, opts, needs, row_scale=g, budget=CHUNK_BUDGET_BYTES * chunk_mem_const
            )
        else:
            per_row = g is not None
            held, budget = plan_exact(x, tensors[1], tensors[3], needs, per_row, chunk_mem_const)
            outputs, terms, w, grad_x32 = token_pass(*tensors, ce_weight, opts, needs[0], budget, held)
            g = torch.ones((), dtype=torch.float32, device=x.device) if g is None else g
            box = [] if grad_x32 is None else [grad_x32]
            held_box = [] if held is None else [held]
            del grad_x32, held
            grads = exact_grads(
                x, tensors[1], tensors[3], terms, w, box, x.dtype, opts, g, per_row, needs[1], needs[2],
                tile_budget(tensors[1], chunk_mem_const), held_box,
            )  # fmt: skip
        grad_x, grad_w, grad_b = grads
        grad_x = None if grad_x is None else grad_x.view(_input.shape)
        return *in_input_dtype(outputs, loss_dtype or _input.dtype), grad_x, grad_w, grad_b


def reference_with_grads(_input, weight, target, bias, ce_weight, opts, needs, token_grad_output, loss_dtype=None):
    """``fused_linear_cross_entropy_forward`` through the reference and autograd."""
    leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip((_input, weight, bias), needs)]
    with torch.enable_grad():
        outputs = fused_linear_cross_entropy_core(leaves[0], leaves[1], target, leaves[2], ce_weight, opts, loss_dtype)
    loss = outputs[0]
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    grads = [None, None, None]
    if wanted and loss.requires_grad:
        upstream = torch.ones_like(loss) if token_grad_output is None else token_grad_output.to(loss.dtype)
        found = iter(torch.autograd.grad(loss, wanted, upstream.reshape(loss.shape)))
        grads = [next(found) if t is not None and t.requires_grad else None for t in leaves]
    detached = tuple(None if o is None else o.detach() for o in outputs)
    return *detached, *grads


def fused_linear_cross_entropy_backward(grad_output, grad_input, grad_weight, grad_bias):
    """The gradients of ``fused_linear_cross_entropy_forward`` times the scalar upstream gradient
    ``grad_output``, in place (no work where it is exactly 1, read on the device: no sync); returns
    ``(grad_input, grad_weight, grad_bias)``. In place on bf16 this rounds a second time unless
    ``grad_output`` is a power of two: ``LigerFusedLinearCrossEntropyFunction`` applies it before
    rounding instead."""
    for g in (grad_input, grad_weight, grad_bias):
        if g is not None:
            scale_by_upstream(g.view(-1, g.shape[-1]) if g.dim() > 1 else g, grad_output, per_row=False)
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------- autograd


class LigerFusedLinearCrossEntropyFunction(RemembersGradMode):
    """Cross-entropy of ``_input [BT, H] @ weight[V, H].T + bias`` against ``target [BT]`` without
    materializing the logits; options as ``LigerCrossEntropyFunction`` plus ``bias``,
    ``use_token_scaling`` (each token's loss and gradient times its detached ``p[y]``) and:

    - ``ce_mode``: None or ``"exact"`` (the default when no ``accum_dtype`` is given): every
      gradient rounded once from an fp32 accumulator, 8NHV flops or fewer, peak extra memory
      about the weight gradient + fp32 input gradient. With a weight gradient and a scalar
      upstream gradient (not ``reduction="none"``), that gradient's buffer exists from the
      forward on (it holds the forward's chunks and the dlogits of up to 7H/8 tokens, which the
      backward then need not recompute) and the backward reads the upstream gradient on the
      host (one sync); ``"fast"``: token chunks around the
      cross-entropy kernel, 6NHV flops, the weight gradient accumulated over chunks in
      ``accum_dtype`` (None: the weight's dtype, as Liger Kernel 0.8.5). Any ``accum_dtype`` with
      ``ce_mode=None`` selects the fast path. See the module docstring for the numbers.
    - ``ce_impl``: None or ``"triton"`` (the kernels), ``"torch"`` (the PyTorch reference).
    - ``chunk_mem_const``: multiplies every chunk budget (default 1).
    - ``loss_dtype`` (beyond Liger's arguments): the dtype of the loss and z-loss, None for the
      input's (what ``F.cross_entropy(F.linear(...))`` returns); computed in fp32, cast once.

    Returns ``(loss, z_loss, token_accuracy, predicted_tokens)``; only ``loss`` is differentiable.
    Under ``torch.no_grad()``, or when no tensor input needs a gradient, only the loss is computed.
    All-ignored and empty batches give loss 0 (PyTorch gives NaN for ``mean``).
    """

    @staticmethod
    def forward(
        ctx,
        _input,
        weight,
        target,
        bias=None,
        ce_weight=None,
        ignore_index=-100,
        lse_square_scale=0.0,
        label_smoothing=0.0,
        reduction="mean",
        softcap=None,
        return_z_loss=False,
        accum_dtype=None,
        use_token_scaling=False,
        return_token_accuracy=False,
        return_predicted_tokens=False,
        ce_impl=None,
        ce_mode=None,
        chunk_mem_const=1,
        loss_dtype=None,
    ):
        check_flce_inputs(_input, weight, target, bias, ce_weight, accum_dtype)
        opts = make_options(
            ignore_index, lse_square_scale, label_smoothing, reduction, softcap, return_z_loss, accum_dtype,
            use_token_scaling, return_token_accuracy, return_predicted_tokens,
        )  # fmt: skip
        mode = resolve_mode(ce_impl, ce_mode, accum_dtype, chunk_mem_const)
        grad_on = caller_grad_mode.enabled
        needs = tuple(grad_on and ctx.needs_input_grad[i] for i in (0, 1, 3))
        ctx.use_triton = mode != "torch" and use_triton(_input) and _input.dtype != torch.float64
        if not ctx.use_triton:
            args = (_input, weight, target, bias, ce_weight, opts, loss_dtype)
            return reference_forward(ctx, fused_linear_cross_entropy_core, any(needs), *args)

        x = _input.reshape(-1, _input.shape[-1]).contiguous()
        tensors = (x, weight.contiguous(), target, None if bias is None else bias.contiguous())
        ctx.input_shape, ctx.mode, ctx.per_row = _input.shape, mode, reduction == "none"
        ctx.opts, ctx.needs, ctx.chunk_mem_const = opts, needs, chunk_mem_const
        ctx.tile_budget = tile_budget(weight, chunk_mem_const)
        if mode == "exact":
            held, budget = plan_exact(x, tensors[1], tensors[3], needs, ctx.per_row, chunk_mem_const)
            outputs, terms, ctx.class_weight, grad_x32 = token_pass(*tensors, ce_weight, opts, needs[0], budget, held)
            ctx.grad_x32 = [] if grad_x32 is None else [grad_x32]  # a box: backward frees it early
            ctx.held = [] if held is None else [held]  # a box too: backward hands the buffers on
            ctx.dtype = x.dtype
            if (needs[1] or needs[2]) and not isinstance(held, SummedGrads):
                ctx.save_for_backward(x, tensors[1], tensors[3], *terms)
        elif ctx.per_row and any(needs):  # per-token upstream gradients are only known in backward
            outputs, _ = flce_chunks(*tensors, ce_weight, opts, budget=CHUNK_BUDGET_BYTES * chunk_mem_const)
            ctx.ce_weight = ce_weight
            ctx.save_for_backward(*tensors)
        else:
            outputs, grads = flce_chunks(
                *tensors, ce_weight, opts, needs=needs, budget=CHUNK_BUDGET_BYTES * chunk_mem_const
            )
            ctx.save_for_backward(*grads)
        return mark_extras_non_differentiable(ctx, in_input_dtype(outputs, loss_dtype or _input.dtype))

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_loss, None, None, None), 19)
        g = grad_loss.reshape(-1 if ctx.per_row else ()).to(torch.float32)
        if ctx.mode == "exact":
            saved = ctx.saved_tensors
            x, weight, bias, terms = (*saved[:3], RowTerms(*saved[3:])) if saved else (None, None, None, None)
            grads = exact_grads(
                x, weight, bias, terms, ctx.class_weight, ctx.grad_x32, ctx.dtype, ctx.opts, g, ctx.per_row,
                ctx.needs[1], ctx.needs[2], ctx.tile_budget, ctx.held,
            )  # fmt: skip
        elif ctx.per_row:
            budget = CHUNK_BUDGET_BYTES * ctx.chunk_mem_const
            _, grads = flce_chunks(*ctx.saved_tensors, ctx.ce_weight, ctx.opts, ctx.needs, row_scale=g, budget=budget)
        else:
            grads = ctx.saved_tensors
            for grad in grads:
                if grad is not None:
                    scale_by_upstream(grad, grad_loss, per_row=False)
        grad_x, grad_w, grad_b = grads
        if grad_x is not None:
            grad_x = grad_x.view(ctx.input_shape)
        return one_grad_per_argument((grad_x, grad_w, None, grad_b), 19)
