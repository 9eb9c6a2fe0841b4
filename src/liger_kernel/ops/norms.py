"""The row-normalization kernel family shared by RMSNorm (``ops/rms_norm.py``) and LayerNorm
(``ops/layer_norm.py``): one forward kernel, two backward kernels and the weight gradient's sum,
RMSNorm being LayerNorm without the mean (constexpr ``IS_RMS``).

Memory traffic is the floor of 5 row passes: the forward reads X and writes Y, saving per-row
fp32 ``rstd`` (and ``mean``) so that the backward reads dY and X once and writes dX without
redoing the statistics' pass over X. The weight (and bias) gradient is reduced from fp32
partials: the backward runs a persistent grid of one program per SM, each looping over a
strided set of row tiles (``_backward_tile``) and summing ``dY * x_hat`` in registers; one
launch of ``_sum_partials_kernel`` over the [dW and/or dB] x [programs, H] partials finishes both,
in the parameters' dtypes (``torch.sum``, a view per gradient and a cast cost more host time than
one launch). No atomics.

Rows up to ``FWD_MAX_BLOCK`` / ``BWD_MAX_BLOCK`` columns are held in registers whole; wider
rows (up to ``MAX_HIDDEN``) loop over column blocks: the forward merges per-block statistics
(Chan's formula, stable for LayerNorm's variance) and re-reads X to normalize; the backward
re-reads the row for its second pass (from cache), keeping the dW sums of up to four column
parts in registers (``_norm_backward_parts_kernel``, rows up to ``PARTS_MAX_COLS``), or, wider,
adding each block's dW into the program's own partial row in memory (still no atomics).
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from liger_kernel.ops.utils import (
    as_rows,
    cdiv,
    check_float,
    check_same_device,
    empty_like_output,
    launch,
    next_power_of_2,
)
from liger_kernel.utils import interpreting

# Widest hidden size supported. Wider rows would work in the loop, but the fp32 dW partials
# ([programs, H]) grow with H: at 2^20 and 132 SMs, 0.55 GB each for dW and dB.
MAX_HIDDEN = 1 << 20
# Widest column block held in registers whole (elements); wider rows loop over blocks, or, in the
# backward, go in column parts (below). The backward holds about 5 fp32 values per element (x,
# dY, w, dW and dB sums): a whole 16384 block spills registers there.
FWD_MAX_BLOCK = 16384
BWD_MAX_BLOCK = 8192
# Elements of one forward program's tile when rows are narrow: several rows per program, so a
# program still moves enough bytes per step to hide memory latency.
TILE = 4096
# Elements per warp when choosing num_warps (16 per thread), up to MAX_WARPS (32 measured slower).
ELEMENTS_PER_WARP = 512
MAX_WARPS = 16
# Rows wider than BWD_MAX_BLOCK, up to PARTS_MAX_COLS, run the backward in column parts (at most
# four) with their dW / dB sums in registers. Measured on H100, 16384 rows bf16, backward alone
# (benchmarks/sweep_configs.py norm-wide), 16384 / 12288 columns: RMSNorm in parts of 8192 over
# 16 warps 557 / 451 us (96% / 89% of the floor; parts of 4096: 664 / 435; one 16384 block:
# 694 / 589; looped with the sums in memory: 1003 / 811); LayerNorm in parts of 4096: 781 / 461
# (parts of 8192: 756 / 650; one block: 1078 / 902). 8 or 32 warps: slower.
PARTS_MAX_COLS = 16384
RMS_PART = 8192
LN_PART = 4096
PART_WARPS = 16

# ``_sum_partials_kernel``'s tile, [partial rows, columns], and warps: one program per 64 columns of
# dW (and of dB), each adding 64 partial rows a step (the backward's persistent grid has one
# partial row per SM: 3 steps on an H200's 132).
SUM_BLOCK_P = 64
SUM_BLOCK_N = 64
SUM_WARPS = 4

# Triton's interpreter truncates fp32 -> bf16 casts where the GPU rounds to nearest even: there the
# kernels round by hand (a few integer ops per element, which the GPU's cast does not need).
ROUND_BF16_BY_HAND = tl.constexpr(interpreting())

# RMSNorm casting modes (constexpr values in the kernels). LayerNorm computes as GEMMA does.
LLAMA, GEMMA, NONE = 0, 1, 2
CASTING_MODES = {"llama": LLAMA, "gemma": GEMMA, "none": NONE}


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _load_weight(W, cols, col_mask, offset, x_dtype, CASTING: tl.constexpr):
    """``offset + W`` in fp32 (``none`` mode rounds it to the input dtype, as its reference does)."""
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32) + offset
    if CASTING == 2:
        w = _round(w, x_dtype)
    return w


@triton.jit
def _x_hat(x, mean, rstd, IS_RMS: tl.constexpr):
    """The normalized x; ``mean`` and ``rstd`` broadcast against ``x`` (per-row [rows, 1] columns
    of a tile, or scalars for one row)."""
    if IS_RMS:
        return x * rstd
    else:
        return (x - mean) * rstd


@triton.jit
def _round(x, dtype):
    """fp32 ``x`` rounded to ``dtype`` (to nearest even), returned in fp32."""
    if dtype == tl.bfloat16 and ROUND_BF16_BY_HAND:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype).to(tl.float32)


@triton.jit
def _rounded(x_hat, x_dtype, CASTING: tl.constexpr):
    """x_hat as the weight sees it: ``llama`` and ``none`` round it to the input dtype first."""
    if CASTING != 1:
        x_hat = _round(x_hat, x_dtype)
    return x_hat


@triton.jit
def _write_output(
    x, mean, rstd, Y, W, B, y_rows, cols, mask, col_mask, offset,
    IS_RMS: tl.constexpr, CASTING: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):  # fmt: skip
    y = _rounded(_x_hat(x, mean[:, None], rstd[:, None], IS_RMS), Y.dtype.element_ty, CASTING)
    if HAS_W:
        y = y * _load_weight(W, cols, col_mask, offset, Y.dtype.element_ty, CASTING)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_rows + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _buffers(STATS, PARTIALS, n_rows, n_cols, IS_RMS: tl.constexpr, DW: tl.constexpr):
    """Pointers to the per-row mean and rstd in STATS ([rstd] or, for LayerNorm, [mean, rstd]
    rows of n_rows) and to the dW and dB partials in PARTIALS ([dW] and/or [dB] blocks of
    [programs, n_cols], those that are wanted): one allocation each instead of two."""
    RSTD = STATS
    if not IS_RMS:
        RSTD = STATS + n_rows
    DB_PART = PARTIALS
    if DW:
        DB_PART = PARTIALS + tl.num_programs(0).to(tl.int64) * n_cols
    return STATS, RSTD, PARTIALS, DB_PART


@triton.jit
def _load_input(x_rows, r_rows, s_rows, c, mask, HAS_RESIDUAL: tl.constexpr, STORE_SUM: tl.constexpr):
    """The row tile's input at columns ``c`` in fp32: x, or with a residual ``x + r`` rounded to
    X's dtype (what the model's own add gives), also stored to S when ``STORE_SUM``."""
    x = tl.load(x_rows + c, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        total = tl.load(r_rows + c, mask=mask, other=0.0).to(tl.float32) + x.to(tl.float32)
        total = _round(total, x.dtype)
        if STORE_SUM:
            tl.store(s_rows + c, total.to(s_rows.dtype.element_ty), mask=mask)
        return total
    return x.to(tl.float32)


@triton.jit
def _norm_forward_kernel(
    X, Y, W, B, STATS, R, S,
    stride_x, stride_r, n_rows, n_cols, eps, offset,
    IS_RMS: tl.constexpr, CASTING: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    """One tile of BLOCK_ROWS rows: statistics, then ``Y = x_hat * (offset + W) + B``. With
    ``HAS_RESIDUAL`` the input is ``S = X + R``, written out as a second output."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    x_rows = X + rows.to(tl.int64)[:, None] * stride_x
    r_rows = R + rows.to(tl.int64)[:, None] * stride_r
    s_rows = S + rows.to(tl.int64)[:, None] * n_cols
    y_rows = Y + rows.to(tl.int64)[:, None] * n_cols
    cols = tl.arange(0, BLOCK_N)
    if SINGLE:  # the whole row in registers: exact two-pass statistics, X read once
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = _load_input(x_rows, r_rows, s_rows, cols[None, :], mask, HAS_RESIDUAL, True)
        if IS_RMS:
            mean = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
            m2 = tl.sum(x * x, axis=1)
        else:
            mean = tl.sum(x, axis=1) / n_cols
            d = tl.where(mask, x - mean[:, None], 0.0)
            m2 = tl.sum(d * d, axis=1)
    else:  # column blocks, merged by Chan's formula (exact centring inside each block)
        mean = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        m2 = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        count = 0.0
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = row_mask[:, None] & (c < n_cols)[None, :]
            x = _load_input(x_rows, r_rows, s_rows, c[None, :], mask, HAS_RESIDUAL, True)
            if IS_RMS:
                m2 += tl.sum(x * x, axis=1)
            else:
                n_b = tl.minimum(n_cols - start, BLOCK_N).to(tl.float32)
                mean_b = tl.sum(x, axis=1) / n_b
                d = tl.where(mask, x - mean_b[:, None], 0.0)
                delta = mean_b - mean
                total = count + n_b
                mean += delta * (n_b / total)
                m2 += tl.sum(d * d, axis=1) + delta * delta * (count * n_b / total)
                count = total
    rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)
    if CASTING == 2:
        rstd = _round(rstd, Y.dtype.element_ty)
    MEAN, RSTD, _, _ = _buffers(STATS, STATS, n_rows, n_cols, IS_RMS, False)
    tl.store(RSTD + rows, rstd, mask=row_mask)
    if not IS_RMS:
        tl.store(MEAN + rows, mean, mask=row_mask)
    if SINGLE:
        _write_output(x, mean, rstd, Y, W, B, y_rows, cols, mask, col_mask, offset, IS_RMS, CASTING, HAS_W, HAS_B)
    else:
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            col_mask = c < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            x = _load_input(x_rows, r_rows, s_rows, c[None, :], mask, HAS_RESIDUAL, False)
            _write_output(x, mean, rstd, Y, W, B, y_rows, c, mask, col_mask, offset, IS_RMS, CASTING, HAS_W, HAS_B)


@triton.jit
def _row_gradient_terms(dy, x, w, mean, rstd, mask, IS_RMS: tl.constexpr, HAS_W: tl.constexpr):
    """g = dY * w' and x_hat, and the row sums sum(g * x_hat), sum(g) the dX formula needs."""
    x_hat = tl.where(mask, _x_hat(x, mean[:, None], rstd[:, None], IS_RMS), 0.0)
    g = dy
    if HAS_W:
        g = dy * w[None, :]
    return g, x_hat, tl.sum(g * x_hat, axis=1), tl.sum(g, axis=1)


@triton.jit
def _input_gradient(g, x_hat, rstd, gx_mean, g_mean, IS_RMS: tl.constexpr):
    """dX = rstd * (g - x_hat * mean(g x_hat) [- mean(g) for LayerNorm]); the row values broadcast
    against ``g`` as in ``_x_hat``."""
    if IS_RMS:
        return (g - x_hat * gx_mean) * rstd
    else:
        return (g - g_mean - x_hat * gx_mean) * rstd


@triton.jit
def _plus_residual_grad(dx, DRES, offsets, mask, HAS_DRES: tl.constexpr):
    """dX plus the gradient reaching the norm's input directly (the fused add's sum output)."""
    if HAS_DRES:
        dx += tl.load(DRES + offsets, mask=mask, other=0.0).to(tl.float32)
    return dx


@triton.jit
def _column_block_terms(
    DY, X, W, rows64, row_mask, c, n_cols, stride_dy, stride_x, mean, rstd, offset, x_dtype,
    IS_RMS: tl.constexpr, CASTING: tl.constexpr, HAS_W: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Columns ``c`` of a row tile: ``(dy, g, x_hat, row sums of g * x_hat and g, mask)``."""
    col_mask = c < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    dy = tl.load(DY + rows64 * stride_dy + c[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + rows64 * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_W:
        w = _load_weight(W, c, col_mask, offset, x_dtype, CASTING)
    g, x_hat, gx_sum, g_sum = _row_gradient_terms(dy, x, w, mean, rstd, mask, IS_RMS, HAS_W)
    return dy, g, x_hat, gx_sum, g_sum, mask


@triton.jit
def _column_block_backward(
    DY, X, W, DX, DRES, rows64, row_mask, c, n_cols, stride_dy, stride_x, stride_dx, stride_dres, mean, rstd,
    gx_mean, g_mean, offset, IS_RMS: tl.constexpr, CASTING: tl.constexpr, HAS_W: tl.constexpr,
    HAS_DRES: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Second pass over columns ``c`` of a row tile: stores their dX and returns their dW and dB
    sums over the tile's rows."""
    x_dtype = X.dtype.element_ty
    dy, g, x_hat, _, _, mask = _column_block_terms(
        DY, X, W, rows64, row_mask, c, n_cols, stride_dy, stride_x, mean, rstd, offset, x_dtype,
        IS_RMS, CASTING, HAS_W, BLOCK_N,
    )  # fmt: skip
    dx = _input_gradient(g, x_hat, rstd[:, None], gx_mean[:, None], g_mean[:, None], IS_RMS)
    dx = _plus_residual_grad(dx, DRES, rows64 * stride_dres + c[None, :], mask, HAS_DRES)
    tl.store(DX + rows64 * stride_dx + c[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    return tl.sum(dy * _rounded(x_hat, x_dtype, CASTING), axis=0), tl.sum(dy, axis=0)


@triton.jit
def _add_to_part(a0, a1, a2, a3, v, p: tl.constexpr):
    """Add ``v`` to accumulator ``p`` of four (a static index: registers cannot be indexed)."""
    if p == 0:
        a0 += v
    elif p == 1:
        a1 += v
    elif p == 2:
        a2 += v
    else:
        a3 += v
    return a0, a1, a2, a3


@triton.jit
def _part(a0, a1, a2, a3, p: tl.constexpr):
    if p == 0:
        return a0
    elif p == 1:
        return a1
    elif p == 2:
        return a2
    else:
        return a3


@triton.jit
def _norm_backward_kernel(
    DY, X, W, STATS, DX, PARTIALS, DRES,
    stride_dy, stride_x, stride_dx, stride_dres, n_rows, n_cols, offset,
    IS_RMS: tl.constexpr, CASTING: tl.constexpr, HAS_W: tl.constexpr, DW: tl.constexpr, DB: tl.constexpr,
    HAS_DRES: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    """A persistent program: row tiles pid, pid + P, ...; its dW / dB sums go to partial row pid."""
    pid = tl.program_id(0)
    MEAN, RSTD, DW_PART, DB_PART = _buffers(STATS, PARTIALS, n_rows, n_cols, IS_RMS, DW)
    n_tiles = tl.cdiv(n_rows, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_N)
    x_dtype = X.dtype.element_ty
    part_row = pid.to(tl.int64) * n_cols
    if SINGLE:
        col_mask = cols < n_cols
        w = tl.zeros([BLOCK_N], dtype=tl.float32)
        if HAS_W:
            w = _load_weight(W, cols, col_mask, offset, x_dtype, CASTING)
        dw = tl.zeros([BLOCK_N], dtype=tl.float32)
        db = tl.zeros([BLOCK_N], dtype=tl.float32)
        for tile in range(pid, n_tiles, tl.num_programs(0)):
            rows = tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
            row_mask = rows < n_rows
            rows64 = rows.to(tl.int64)[:, None]
            mask = row_mask[:, None] & col_mask[None, :]
            dy = tl.load(DY + rows64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            x = tl.load(X + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
            mean = rstd
            if not IS_RMS:
                mean = tl.load(MEAN + rows, mask=row_mask, other=0.0)
            g, x_hat, gx_sum, g_sum = _row_gradient_terms(dy, x, w, mean, rstd, mask, IS_RMS, HAS_W)
            dx = _input_gradient(g, x_hat, rstd[:, None], (gx_sum / n_cols)[:, None], (g_sum / n_cols)[:, None], IS_RMS)
            dx = _plus_residual_grad(dx, DRES, rows64 * stride_dres + cols[None, :], mask, HAS_DRES)
            tl.store(DX + rows64 * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
            if DW:
                dw += tl.sum(dy * _rounded(x_hat, x_dtype, CASTING), axis=0)
            if DB:
                db += tl.sum(dy, axis=0)
        if DW:
            tl.store(DW_PART + part_row + cols, dw, mask=col_mask)
        if DB:
            tl.store(DB_PART + part_row + cols, db, mask=col_mask)
    else:  # column blocks: pass 1 for the row sums, pass 2 for dX, and dW / dB into the partial row
        for tile in range(pid, n_tiles, tl.num_programs(0)):
            rows = tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
            row_mask = rows < n_rows
            rows64 = rows.to(tl.int64)[:, None]
            rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
            mean = rstd
            if not IS_RMS:
                mean = tl.load(MEAN + rows, mask=row_mask, other=0.0)
            gx_sum = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
            g_sum = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK_N):
                _, _, _, gx_b, g_b, _ = _column_block_terms(
                    DY, X, W, rows64, row_mask, start + cols, n_cols, stride_dy, stride_x, mean, rstd, offset,
                    x_dtype, IS_RMS, CASTING, HAS_W, BLOCK_N,
                )  # fmt: skip
                gx_sum += gx_b
                g_sum += g_b
            for start in range(0, n_cols, BLOCK_N):
                c = start + cols
                dw_b, db_b = _column_block_backward(
                    DY, X, W, DX, DRES, rows64, row_mask, c, n_cols, stride_dy, stride_x, stride_dx, stride_dres,
                    mean, rstd, gx_sum / n_cols, g_sum / n_cols, offset, IS_RMS, CASTING, HAS_W, HAS_DRES, BLOCK_N,
                )  # fmt: skip
                if DW:
                    dw_b += tl.load(DW_PART + part_row + c, mask=c < n_cols)
                    tl.store(DW_PART + part_row + c, dw_b, mask=c < n_cols)
                if DB:
                    db_b += tl.load(DB_PART + part_row + c, mask=c < n_cols)
                    tl.store(DB_PART + part_row + c, db_b, mask=c < n_cols)


@triton.jit
def _row_part(
    DY_ROW, X_ROW, W, c, mask, mean, rstd, offset, x_dtype,
    IS_RMS: tl.constexpr, CASTING: tl.constexpr, HAS_W: tl.constexpr,
):  # fmt: skip
    """Columns ``c`` of one row (1-D): ``(dy, g, x_hat)`` in fp32 (masked columns give zeros)."""
    dy = tl.load(DY_ROW + c, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X_ROW + c, mask=mask, other=0.0).to(tl.float32)
    x_hat = _x_hat(x, mean, rstd, IS_RMS)  # masked: dy = 0, so no term depends on it
    g = dy
    if HAS_W:
        g = dy * _load_weight(W, c, mask, offset, x_dtype, CASTING)
    return dy, g, x_hat


@triton.jit
def _norm_backward_parts_kernel(
    DY, X, W, STATS, DX, PARTIALS, DRES,
    stride_dy, stride_x, stride_dx, stride_dres, n_rows, n_cols, offset,
    IS_RMS: tl.constexpr, CASTING: tl.constexpr, HAS_W: tl.constexpr, DW: tl.constexpr, DB: tl.constexpr,
    HAS_DRES: tl.constexpr, PART: tl.constexpr, PARTS: tl.constexpr,
):  # fmt: skip
    """Rows of up to PARTS (<= 4) column parts, one row at a time, each part with its own dW / dB
    sums in registers. Pass 1 reads the row for its sums, pass 2 re-reads it (from cache: one row
    per program in flight) for dX. Holding a whole wide row and its sums at once spills
    registers; 1-D parts compile to fewer than 2-D [1, PART] tiles (measured)."""
    pid = tl.program_id(0)
    MEAN, RSTD, DW_PART, DB_PART = _buffers(STATS, PARTIALS, n_rows, n_cols, IS_RMS, DW)
    cols = tl.arange(0, PART)
    x_dtype = X.dtype.element_ty
    dw0 = tl.zeros([PART], dtype=tl.float32)
    dw1, dw2, dw3, db0, db1, db2, db3 = dw0, dw0, dw0, dw0, dw0, dw0, dw0
    for row in range(pid, n_rows, tl.num_programs(0)):
        r = pid.to(tl.int64) * 0 + row  # int64 offsets (the interpreter gives ``row`` as an int)
        dy_row, x_row, dx_row = DY + r * stride_dy, X + r * stride_x, DX + r * stride_dx
        rstd = tl.load(RSTD + row)
        mean = rstd
        if not IS_RMS:
            mean = tl.load(MEAN + row)
        gx = tl.zeros([PART], dtype=tl.float32)
        g_acc = tl.zeros([PART], dtype=tl.float32)
        for part in tl.static_range(PARTS):  # summed across parts first: one reduction per row
            c = part * PART + cols
            _, g, x_hat = _row_part(
                dy_row, x_row, W, c, c < n_cols, mean, rstd, offset, x_dtype, IS_RMS, CASTING, HAS_W
            )
            gx += g * x_hat
            g_acc += g
        gx_sum = tl.sum(gx, axis=0)
        g_sum = tl.sum(g_acc, axis=0)
        for part in tl.static_range(PARTS):
            c = part * PART + cols
            mask = c < n_cols
            dy, g, x_hat = _row_part(dy_row, x_row, W, c, mask, mean, rstd, offset, x_dtype, IS_RMS, CASTING, HAS_W)
            dx = _input_gradient(g, x_hat, rstd, gx_sum / n_cols, g_sum / n_cols, IS_RMS)
            dx = _plus_residual_grad(dx, DRES, r * stride_dres + c, mask, HAS_DRES)
            tl.store(dx_row + c, dx.to(DX.dtype.element_ty), mask=mask)
            dw0, dw1, dw2, dw3 = _add_to_part(dw0, dw1, dw2, dw3, dy * _rounded(x_hat, x_dtype, CASTING), part)
            db0, db1, db2, db3 = _add_to_part(db0, db1, db2, db3, dy, part)
    part_row = pid.to(tl.int64) * n_cols
    for part in tl.static_range(PARTS):
        c = part * PART + cols
        if DW:
            tl.store(DW_PART + part_row + c, _part(dw0, dw1, dw2, dw3, part), mask=c < n_cols)
        if DB:
            tl.store(DB_PART + part_row + c, _part(db0, db1, db2, db3, part), mask=c < n_cols)


@triton.jit
def _sum_partials_kernel(
    PARTIALS, DW, DB, n_programs, n_cols,
    DW_SUM: tl.constexpr, DB_SUM: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dW and dB in their parameters' dtypes: the backward's fp32 partials ([dW and/or dB] x
    [programs, H]) summed over the programs. Program (i, j) sums column block i of partial block
    j; ``DW_SUM`` / ``DB_SUM``: the block of dW / dB, -1 when not wanted."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    block = tl.program_id(1)
    rows = PARTIALS + block.to(tl.int64) * n_programs * n_cols
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for start in range(0, n_programs, BLOCK_P):
        p = start + tl.arange(0, BLOCK_P)
        mask = (p < n_programs)[:, None] & col_mask[None, :]
        acc += tl.load(rows + p.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    total = tl.sum(acc, axis=0)
    if DW_SUM >= 0:
        if block == DW_SUM:
            tl.store(DW + cols, total.to(DW.dtype.element_ty), mask=col_mask)
    if DB_SUM >= 0:
        if block == DB_SUM:
            tl.store(DB + cols, total.to(DB.dtype.element_ty), mask=col_mask)


# ----------------------------------------------------------------------------- launchers


def _settings(n_rows: int, n_cols: int, max_block: int, tile_of) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_N, num_warps): whole rows up to ``max_block``, several rows per program
    when they are narrow (up to ``tile_of(BLOCK_N)`` elements), and about 16 elements per thread
    (two 16-byte loads of bf16)."""
    block_n = min(next_power_of_2(max(n_cols, 1)), max_block)
    block_rows = max(1, min(tile_of(block_n) // block_n, next_power_of_2(max(n_rows, 1))))
    num_warps = min(MAX_WARPS, max(4, block_rows * block_n // ELEMENTS_PER_WARP))
    return block_rows, block_n, num_warps


def _backward_tile(block_n: int) -> int:
    """Elements of one backward tile (whole rows) for a column block of ``block_n``. The backward's
    persistent grid is one program per SM, so its fp32 dW partials are one row per SM. Measured
    on H100 (16384 rows bf16, CUDA-graph fwd+bwd, RMSNorm / LayerNorm us), per width:
    1024: 2 rows, 4 warps 105 / 119 (4 rows, 8 warps: 113 / 158; 8 rows, 16 warps: 136 / 213);
    2048: 2 rows, 8 warps 156 / 173 (1 row: 195 / 215; 4 rows: 190 / 269);
    4096: 4 rows, 16 warps 241 / 248 (2 rows: 257 / 265; 1 row, 8 warps: 294 / 319).
    From 8192 columns one row already needs 16 warps (and more spill registers)."""
    if block_n <= 2048:
        return max(2048, 2 * block_n)
    return 4 * block_n if block_n == 4096 else block_n


@functools.lru_cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_programs(n_tiles: int, device_index: int) -> int:
    """The backward's persistent grid: one program per SM on a GPU (``device_index`` as
    ``Tensor.get_device()`` gives it, -1 on the CPU); a handful under the interpreter, where
    each program is slow but must still loop over tiles."""
    if device_index < 0 or interpreting():
        return max(1, min(n_tiles, 3))
    return max(1, min(n_tiles, _sm_count(device_index)))


class _BackwardLaunch(NamedTuple):
    n_programs: int
    block_rows: int
    block_n: int  # the column part of ``_norm_backward_parts_kernel``
    num_warps: int
    single: bool  # whole rows in one block
    parts: int  # column parts of ``_norm_backward_parts_kernel``; 0: ``_norm_backward_kernel``
    sum_block_p: int  # partial rows per step of ``_sum_partials_kernel``


def _backward_launch(n_rows: int, n_cols: int, is_rms: bool, device_index: int) -> _BackwardLaunch:
    """The backward's kernel and settings: whole rows, column parts in registers, or looped."""
    block_rows, block_n, num_warps = _settings(n_rows, n_cols, BWD_MAX_BLOCK, _backward_tile)
    single = block_n >= n_cols
    if single or n_cols > PARTS_MAX_COLS:
        n_programs = _num_programs(cdiv(n_rows, block_rows), device_index)
        return _BackwardLaunch(n_programs, block_rows, block_n, num_warps, single, 0, _sum_block_p(n_programs))
    part = RMS_PART if is_rms else LN_PART
    n_programs = _num_programs(n_rows, device_index)
    return _BackwardLaunch(n_programs, 1, part, PART_WARPS, False, cdiv(n_cols, part), _sum_block_p(n_programs))


def _sum_block_p(n_programs: int) -> int:
    return min(SUM_BLOCK_P, next_power_of_2(n_programs))


class NormPlan(NamedTuple):
    """What one norm call's host side needs that depends only on its inputs' metadata (shapes,
    strides, dtypes, devices), worked out once per such geometry: checking the inputs and
    choosing the launch settings cost more host time than the GPU spends on a small norm."""

    x_shape: torch.Size
    n_rows: int
    n_cols: int
    x_stride: int  # row stride to read X in place; 0: X has no row view and is copied to rows
    stats_rows: int  # per-row fp32 statistics: [rstd] (RMSNorm) or [mean, rstd] (LayerNorm)
    fwd_grid: tuple
    fwd_block_rows: int
    fwd_block_n: int
    fwd_warps: int
    bwd: _BackwardLaunch
    is_rms: bool
    dense_params: bool  # W and B (those given) are contiguous, as the kernels index them


_PLANS: dict = {}
_MAX_PLANS = 1024


def _tensor_key(t):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def norm_plan(X, W, B, is_rms: bool) -> NormPlan:
    """The cached ``NormPlan`` of these inputs; the inputs are checked (``check_norm_inputs``)
    the first time a geometry is seen."""
    try:
        key = (_tensor_key(X), _tensor_key(W), _tensor_key(B), is_rms)
    except AttributeError:  # not tensors: the check says which argument
        check_norm_inputs(X, W, B)
        raise
    plan = _PLANS.get(key)
    if plan is None:
        check_norm_inputs(X, W, B)
        plan = _make_plan(X, is_rms, all(t is None or t.is_contiguous() for t in (W, B)))
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _make_plan(X, is_rms: bool, dense_params: bool) -> NormPlan:
    X2 = as_rows(X)
    n_rows, n_cols = X2.shape
    x_stride = X2.stride(0) if X2.data_ptr() == X.data_ptr() and X.numel() else 0
    block_rows, block_n, num_warps = _settings(n_rows, n_cols, FWD_MAX_BLOCK, lambda block_n: TILE)
    bwd = _backward_launch(n_rows, n_cols, is_rms, X.get_device())
    grid = (cdiv(n_rows, block_rows),)
    stats_rows = 1 if is_rms else 2
    return NormPlan(
        X.shape, n_rows, n_cols, x_stride, stats_rows, grid, block_rows, block_n, num_warps, bwd, is_rms, dense_params
    )


def clear_launch_caches() -> None:
    """Forget the cached plans (after changing the tile constants, as tests do)."""
    _PLANS.clear()


def check_norm_inputs(X, W, B=None) -> None:
    """Shapes, dtypes and devices of a norm's inputs. W (and B) may be None. Allowed dtype
    pairings: W (B) in X's dtype, or fp32 with any X (what mixed precision gives: fp32
    parameters, bf16/fp16 activations). The output is always in X's dtype."""
    check_float("X", X)
    if X.dim() == 0:
        raise ValueError("`X` must have at least one dimension: the hidden size is its last.")
    hidden = X.shape[-1]
    if hidden > MAX_HIDDEN:
        raise ValueError(f"`X` has rows of {hidden} elements; the widest supported is {MAX_HIDDEN} (2^20).")
    for name, t in (("W", W), ("B", B)):
        if t is None:
            continue
        check_float(name, t)
        if t.dim() != 1 or t.shape[0] != hidden:
            raise ValueError(
                f"`{name}` has shape {tuple(t.shape)} but `X` has hidden size {hidden}: `{name}` must be [{hidden}]."
            )
        if t.dtype not in (X.dtype, torch.float32):
            raise TypeError(f"`{name}` is {t.dtype} with `X` {X.dtype}: `{name}` must be {X.dtype} or float32.")
    check_same_device(X=X, W=W, B=B)


def require_kernels(X) -> None:
    """The ``*_forward`` / ``*_backward`` functions run the kernels only (the Functions fall back
    to the reference): X must be where they run, in a dtype they compute exactly."""
    if X.device.type == "cpu" and not interpreting():
        raise RuntimeError(
            "`X` is on the CPU, where the Triton kernels run only in Triton's interpreter (set "
            "TRITON_INTERPRET=1 before importing liger_kernel), or use the autograd Function, "
            "which falls back to the PyTorch reference."
        )
    if X.dtype == torch.float64:
        raise TypeError("`X` is float64, which the kernels (fp32 inside) do not compute exactly: use the Function.")


def kernel_forward(X, W, B, eps: float, offset: float, casting: int, is_rms: bool):
    """The forward kernel without autograd (the ops' ``*_forward`` functions): ``(Y, X as
    [rows, H] (a view where one exists), stats, plan)``."""
    plan = norm_plan(X, W, B, is_rms)
    require_kernels(X)
    W, B = dense(plan, W, B)
    Y, X_rows, stats = norm_forward(plan, X, W, B, eps, offset, casting)
    return Y, X_rows.reshape(plan.n_rows, plan.n_cols), stats, plan


def kernel_backward(dY, X, W, B, offset: float, casting: int, needs_dw, needs_db, in_place: bool, **stats_rows):
    """The backward kernel without autograd (the ops' ``*_backward`` functions): ``(dX in dY's
    shape, dW, dB)``. ``stats_rows`` are the per-row statistics by name (``RSTD``, or ``Mean``
    and ``RSTD``); ``needs_dw`` / ``needs_db`` None: whenever the parameter is given."""
    plan = norm_plan(X, W, B, is_rms=len(stats_rows) == 1)
    require_kernels(X)
    stats = stats_of(plan.n_rows, **stats_rows)
    W, B = dense(plan, W, B)
    need_dw = W is not None and (needs_dw is None or bool(needs_dw))
    need_db = B is not None and (needs_db is None or bool(needs_db))
    dX, dW, dB = norm_backward(plan, dY, rows_of(plan, X), W, B, stats, offset, casting, need_dw, need_db, in_place)
    return dX.view(dY.shape), dW, dB


def dense(plan: NormPlan, W, B):
    """``(W, B)`` as the kernels index them: contiguous (a strided weight is copied)."""
    if plan.dense_params:
        return W, B
    return tuple(None if t is None else t.contiguous() for t in (W, B))


def rows_of(plan: NormPlan, X):
    """What the kernels read X from: X itself when its rows can be read in place, else a
    contiguous [rows, H] copy."""
    return X if plan.x_stride else X.reshape(plan.n_rows, plan.n_cols).contiguous()


def stats_of(n_rows: int, **rows):
    """The kernels' statistics buffer, [len(rows), n_rows] fp32, from per-row tensors given by name
    (``Mean``, ``RSTD``): the forward's own views of one buffer are used as they are."""
    named = list(rows.items())
    for name, t in named:
        if not isinstance(t, torch.Tensor) or t.numel() != n_rows:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"`{name}` must hold one value per row of `X` ({n_rows}), got {got}.")
    first = named[0][1]
    adjacent = (
        first.dtype == torch.float32
        and first.is_contiguous()
        and all(
            t.dtype == torch.float32
            and t.is_contiguous()
            and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
            and t.data_ptr() == first.data_ptr() + 4 * n_rows * i
            for i, (_, t) in enumerate(named)
        )
    )
    if adjacent:
        return first.as_strided((len(named), n_rows), (n_rows, 1))
    return torch.stack([t.reshape(n_rows).to(torch.float32) for _, t in named])


def norm_forward(plan: NormPlan, X, W, B, eps: float, offset: float, casting: int, residual=None):
    """``(Y, X_rows, stats)``: Y in X's shape and dtype; X_rows (``rows_of``), what the backward
    reads X from; the fp32 per-row statistics, [rstd] or [mean, rstd] rows.

    With ``residual`` (R, X's shape and dtype) the norm is of ``S = X + R``, and X_rows is S, a
    new contiguous tensor in X's shape (the fused add's second output)."""
    X_rows = rows_of(plan, X)
    Y = empty_like_output(X)
    stats = torch.empty((plan.stats_rows, plan.n_rows), dtype=torch.float32, device=X.device)
    R_rows = S = X_rows
    if residual is not None:
        R_rows, S = as_rows(residual), empty_like_output(X)
    if plan.n_rows and plan.n_cols:
        tensors = (X_rows, Y, X_rows if W is None else W, X_rows if B is None else B, stats, R_rows, S)
        scalars = (
            plan.x_stride or plan.n_cols, R_rows.stride(0), plan.n_rows, plan.n_cols, float(eps), float(offset),
            plan.is_rms, casting, W is not None, B is not None, residual is not None,
            plan.fwd_block_rows, plan.fwd_block_n, plan.fwd_block_n >= plan.n_cols,
        )  # fmt: skip
        launch(_norm_forward_kernel, plan.fwd_grid, tensors, scalars, plan.fwd_warps)
    return Y, S, stats


def norm_backward(
    plan: NormPlan, dY, X_rows, W, B, stats, offset: float, casting: int, need_dw, need_db, reuse_dy, dres=None
):
    """``(dX in X's shape, dW in W's dtype or None, dB in B's dtype or None)``; dW and dB are
    summed in fp32. ``dres`` (X's shape): a gradient reaching the norm's input directly, added to
    dX in the same pass (the fused add's sum output).

    ``reuse_dy`` writes dX into dY's buffer when dY is dense and in X's dtype: only for a caller
    that knows nothing else reads dY. A dY that had to be copied to rows is our own buffer and
    takes dX either way."""
    n_rows, n_cols = plan.n_rows, plan.n_cols
    same_dtype = dY.dtype == X_rows.dtype
    if dY.is_contiguous():
        dY_rows, dy_stride = dY, n_cols
        dX = dY if reuse_dy and same_dtype else empty_like_output(dY if same_dtype else X_rows.view(plan.x_shape))
    else:
        dY_rows = as_rows(dY)
        dy_stride = dY_rows.stride(0)
        ours = dY_rows.data_ptr() != dY.data_ptr()  # a copy made here
        dense = dy_stride == n_cols and same_dtype
        reuse = dense and (reuse_dy or ours)
        dX = dY_rows.view(plan.x_shape) if reuse else empty_like_output(X_rows.view(plan.x_shape))
    dW = empty_like_output(W) if need_dw else None
    dB = empty_like_output(B) if need_db else None
    if dX.numel() == 0:
        return dX, *(None if g is None else g.zero_() for g in (dW, dB))
    settings = plan.bwd
    # fp32 partials, [dW and/or dB] x [programs, H]: every program stores its row when it holds the
    # sums in registers; the looped path adds block by block into it, so it starts at zero.
    n_sums = need_dw + need_db
    partials = X_rows
    if n_sums:
        alloc = torch.empty if settings.single or settings.parts else torch.zeros
        partials = alloc((n_sums, settings.n_programs, n_cols), dtype=torch.float32, device=X_rows.device)
    dres_rows = dY_rows if dres is None else as_rows(dres)
    tensors = (dY_rows, X_rows, X_rows if W is None else W, stats, dX, partials, dres_rows)
    scalars = (
        dy_stride, plan.x_stride or n_cols, n_cols, dres_rows.stride(0), n_rows, n_cols, float(offset),
        plan.is_rms, casting, W is not None, need_dw, need_db, dres is not None,
    )  # fmt: skip
    if settings.parts:
        kernel, scalars = _norm_backward_parts_kernel, (*scalars, settings.block_n, settings.parts)
    else:
        kernel, scalars = _norm_backward_kernel, (*scalars, settings.block_rows, settings.block_n, settings.single)
    launch(kernel, (settings.n_programs,), tensors, scalars, settings.num_warps)
    if n_sums:
        sums = (settings.n_programs, n_cols, 0 if need_dw else -1, n_sums - 1 if need_db else -1)
        grid = (cdiv(n_cols, SUM_BLOCK_N), n_sums)
        tensors = (partials, partials if dW is None else dW, partials if dB is None else dB)
        launch(_sum_partials_kernel, grid, tensors, (*sums, settings.sum_block_p, SUM_BLOCK_N), SUM_WARPS)
    return dX, dW, dB
