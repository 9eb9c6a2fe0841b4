"""Fused mixture-of-experts experts block: ``y[t] = sum_k w[t, k] * expert_{e[t, k]}(x[t])`` with
``expert_e(x) = down_e(gating(gate_up_e(x)))``, forward and backward.

The S = tokens x top_k (token, expert) pairs are sorted by expert once (a permutation, ``order``):
no per-expert copy of the hidden states is made. Rows of the sorted pairs are cut into tiles of
``BLOCK_M`` rows that never straddle two experts, so each tile is one GEMM tile against one expert's
weights, with the token's row of x (or of the output gradient) gathered through the permutation in
the load. Seven GEMMs in all, each a Triton kernel with its elementwise work in the epilogue:

forward   gate_up  gu = x[t] @ W_gu[e]^T (+ bias), h = gating(gu)   [S, 2I] kept for backward
          down     o = (h @ W_d[e]^T + bias) * w, per pair, summed over top_k
backward  down     g = dy[t] @ W_d[e]; recomputes h from gu; dw = <g, h> (+ <dy, bias>),
                   dgu = gating'(gu) * w * g, hw = w * h (a GEMM writing g, then an elementwise
                   pass: ``SPLIT_DOWN_BACKWARD``; or one kernel)
          d_down   dW_d[e] = sum over e's rows of dy[t]^T hw
          d_gate_up dW_gu[e] = sum over e's rows of dgu^T x[t]
          dx       dx[t] = sum_k dgu @ W_gu[e]

Only gu (the pre-activation, [S, 2I]) is kept between forward and backward: the activation is
recomputed where it is needed, which is cheaper than a second [S, I] tensor per layer, and the
backward writes dgu over it (so a second backward through one graph raises). The backward's
buffers are freed as soon as read. On an H200 at the Qwen3-30B-A3B layer shape (8192 tokens,
bf16) forward + backward took 5.87 ms and 1408 MiB against transformers' grouped_mm experts' 9.18
ms and 1889 MiB. The gate_up bias gradient is summed with fp32 atomics (its rounding order varies
from run to run); every other result is deterministic.

Two weight layouts, both transformers 5.x's: Qwen3-MoE / Mixtral / DeepSeek store ``gate_up_proj[E,
2I, H]`` (gate rows then up rows) and ``down_proj[E, H, I]``; GPT-OSS stores them transposed,
``[E, H, 2I]`` with gate and up interleaved (columns 0, 2, 4... are gate) and ``[E, I, H]``, plus
biases, and gates with ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)``, ``g =
min(gate, limit)``. The kernels read either through strides (never a copy), and gu keeps the
weight's order of gate and up columns, so only the gating epilogues need to know it.
"""

import torch
import triton
import triton.language as tl

from liger_kernel.ops.utils import FLOAT_DTYPES, LigerFunction, cdiv, fallback_backward, fallback_forward
from liger_kernel.utils import interpreting, use_triton

# Triton's interpreter computes bf16/fp16 tl.dot wrongly: there the operands are widened to fp32.
DOT_FP32 = tl.constexpr(interpreting())
TILE_GROUP = tl.constexpr(8)


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr):
    """acc + a @ b in fp32; fp32 operands in full fp32 (no TF32), as the reference computes."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if a.dtype == tl.float32:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _rows_times_weight(a_ptrs, b_ptrs, row_mask, col_mask, n_k, stride_bk, acc, DOT_FP32: tl.constexpr,
                       BLOCK_K: tl.constexpr):  # fmt: skip
    """acc + a @ b over n_k: a_ptrs a [BLOCK_M, BLOCK_K] block of rows (unit stride along k, rows
    gathered by the caller), b_ptrs a [BLOCK_K, N] block of one expert's weight (stride_bk along k)."""
    k = tl.arange(0, BLOCK_K)
    for k0 in range(0, n_k, BLOCK_K):
        k_mask = k0 + k < n_k
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = _dot(a, b, acc, DOT_FP32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    return acc


@triton.jit
def _gating(gate, up, alpha, limit, CLAMPED: tl.constexpr):
    """(h, dh/dgate, dh/dup) in fp32: ``silu(gate) * up``, or GPT-OSS's clamped form (its clamps
    pass no gradient outside their range, as ``torch.clamp``'s backward)."""
    if CLAMPED:
        g = tl.minimum(gate, limit)
        u = tl.minimum(tl.maximum(up, -limit), limit)
        s = tl.sigmoid(alpha * g)
        glu = g * s
        h = (u + 1.0) * glu
        dgate = tl.where(gate <= limit, (u + 1.0) * (s + alpha * g * s * (1.0 - s)), 0.0)
        dup = tl.where((up >= -limit) & (up <= limit), glu, 0.0)
    else:
        s = tl.sigmoid(gate)
        act = gate * s
        h = act * up
        dgate = up * s * (1.0 + gate * (1.0 - s))
        dup = act
    return h, dgate, dup


@triton.jit
def _gate_up_rows(rows, row_mask, j0, inter, BLOCK_N: tl.constexpr):
    """Offsets of rows' gate/up pair columns j0..j0 + BLOCK_N in a [S, 2I] tensor, and their mask."""
    return rows[:, None].to(tl.int64) * (2 * inter), row_mask[:, None] & (j0 + tl.arange(0, BLOCK_N) < inter)[None, :]


@triton.jit
def _load_gate_up(gu_ptr, rows, row_mask, j0, inter, INTERLEAVED: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):  # fmt: skip
    """(gate, up) [BLOCK_M, BLOCK_N] in fp32 for pair columns j0..: in the weight's own order, 2j and
    2j + 1 (GPT-OSS, read as one contiguous tile) or j and I + j."""
    row, mask = _gate_up_rows(rows, row_mask, j0, inter, BLOCK_N)
    if INTERLEAVED:
        c = 2 * j0 + tl.arange(0, 2 * BLOCK_N)
        pair = tl.load(gu_ptr + row + c[None, :], mask=row_mask[:, None] & (c < 2 * inter)[None, :], other=0.0)
        gate, up = tl.split(tl.reshape(pair.to(tl.float32), (BLOCK_M, BLOCK_N, 2)))
    else:
        j = j0 + tl.arange(0, BLOCK_N)
        gate = tl.load(gu_ptr + row + j[None, :], mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gu_ptr + row + inter + j[None, :], mask=mask, other=0.0).to(tl.float32)
    return gate, up


@triton.jit
def _store_gate_up(gu_ptr, rows, row_mask, j0, inter, gate, up, INTERLEAVED: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):  # fmt: skip
    """Store (gate, up) where ``_load_gate_up`` reads them, rounded to gu's dtype."""
    row, mask = _gate_up_rows(rows, row_mask, j0, inter, BLOCK_N)
    if INTERLEAVED:
        c = 2 * j0 + tl.arange(0, 2 * BLOCK_N)
        pair = tl.reshape(tl.join(gate, up), (BLOCK_M, 2 * BLOCK_N))
        mask2 = row_mask[:, None] & (c < 2 * inter)[None, :]
        tl.store(gu_ptr + row + c[None, :], pair.to(gu_ptr.dtype.element_ty), mask=mask2)
    else:
        j = j0 + tl.arange(0, BLOCK_N)
        tl.store(gu_ptr + row + j[None, :], gate.to(gu_ptr.dtype.element_ty), mask=mask)
        tl.store(gu_ptr + row + inter + j[None, :], up.to(gu_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile(tiles_ptr, n_tiles, n_blocks, BLOCK_M: tl.constexpr):
    """(rows, row mask, expert, column block) of this program's tile of sorted pairs (``_route``).
    TILE_GROUP consecutive tiles run all their column blocks before the next group starts, so
    their rows are read from L2 once per group rather than from HBM once per column block (at
    GPT-OSS's width, 45 blocks: 8.5 GB of re-reads in the backward's first GEMM)."""
    pid = tl.program_id(0)
    per_group = TILE_GROUP * n_blocks
    first = (pid // per_group) * TILE_GROUP
    group_size = tl.minimum(n_tiles - first, TILE_GROUP)
    tile = first + (pid % per_group) % group_size
    block = (pid % per_group) // group_size
    row0 = tl.load(tiles_ptr + tile)
    row_end = tl.load(tiles_ptr + n_tiles + tile)
    expert = tl.load(tiles_ptr + 2 * n_tiles + tile).to(tl.int64)
    rows = row0 + tl.arange(0, BLOCK_M)
    return rows, rows < row_end, expert, block


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, bias_ptr, gu_ptr, h_ptr, order_ptr, tiles_ptr,
    stride_x, stride_we, stride_wq, stride_wh, stride_be, stride_bq,
    n_tiles, num_experts, inter, H, TOP_K: tl.constexpr, alpha, limit,
    CLAMPED: tl.constexpr, HAS_BIAS: tl.constexpr, INTERLEAVED: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """gu[r] = x[token(r)] @ W_gu[e]^T (+ bias) for BLOCK_N gate and BLOCK_N up columns at once (one
    [BLOCK_M, 2 BLOCK_N] dot, gate and up interleaved in the tile), and h = gating(gu)."""
    rows, row_mask, expert, block = _tile(tiles_ptr, n_tiles, tl.cdiv(inter, BLOCK_N), BLOCK_M)
    if expert >= num_experts:
        return
    pairs = tl.load(order_ptr + rows, mask=row_mask, other=0)
    tokens = (pairs // TOP_K).to(tl.int64)
    c = tl.arange(0, 2 * BLOCK_N)
    j = block * BLOCK_N + c // 2
    col_mask = j < inter
    if INTERLEAVED:  # 2 BLOCK_N contiguous columns: gate, up, gate, up...
        wcol = block * 2 * BLOCK_N + c
    else:  # gate j and up j side by side
        wcol = j + (c % 2) * inter
    k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tokens[:, None] * stride_x + k[None, :]
    b_ptrs = w_ptr + expert * stride_we + wcol[None, :] * stride_wq + k[:, None] * stride_wh
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    acc = _rows_times_weight(a_ptrs, b_ptrs, row_mask, col_mask, H, stride_wh, acc, DOT_FP32, BLOCK_K)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + expert * stride_be + wcol * stride_bq, mask=col_mask, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    j0 = block * BLOCK_N
    if INTERLEAVED:  # the tile is already in gu's order: one contiguous store
        mask = row_mask[:, None] & col_mask[None, :]
        tl.store(
            gu_ptr + rows[:, None].to(tl.int64) * (2 * inter) + wcol[None, :],
            acc.to(gu_ptr.dtype.element_ty),
            mask=mask,
        )
    else:
        _store_gate_up(gu_ptr, rows, row_mask, j0, inter, gate, up, INTERLEAVED, BLOCK_M, BLOCK_N)
    h, _, _ = _gating(gate, up, alpha, limit, CLAMPED)
    _, mask = _gate_up_rows(rows, row_mask, j0, inter, BLOCK_N)
    jn = j0 + tl.arange(0, BLOCK_N)
    tl.store(h_ptr + rows[:, None].to(tl.int64) * inter + jn[None, :], h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pair_output_kernel(
    a_ptr, w_ptr, bias_ptr, weights_ptr, out_ptr, order_ptr, tiles_ptr,
    stride_a, stride_we, stride_wk, stride_wn, stride_be, stride_out,
    n_tiles, num_experts, n_k, n_out, TOP_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, WEIGHTED: tl.constexpr, GATHER: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """out[pair(r)] = (a[r] @ W[e] (+ bias)) (* w[pair]), written at the pair's unsorted row: the
    forward's down projection (a = h, W = W_d) and the backward's dx (a = dgu, W = W_gu). With
    GATHER, out[r] = a[token(r)] @ W[e] at the sorted row instead: the backward's g = dy @ W_d^T
    of the split down backward. The rows routed to no expert get zeros."""
    rows, row_mask, expert, block = _tile(tiles_ptr, n_tiles, tl.cdiv(n_out, BLOCK_N), BLOCK_M)
    n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < n_out
    k = tl.arange(0, BLOCK_K)
    pairs = tl.load(order_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    a_rows = pairs // TOP_K if GATHER else rows.to(tl.int64)
    a_ptrs = a_ptr + a_rows[:, None] * stride_a + k[None, :]
    b_ptrs = w_ptr + expert * stride_we + n[None, :] * stride_wn + k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_k = tl.where(expert < num_experts, n_k, 0)  # no product for pairs routed to no expert
    acc = _rows_times_weight(a_ptrs, b_ptrs, row_mask, n_mask, n_k, stride_wk, acc, DOT_FP32, BLOCK_K)
    if HAS_BIAS:
        if expert < num_experts:
            acc += tl.load(bias_ptr + expert * stride_be + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if WEIGHTED:
        acc *= tl.load(weights_ptr + pairs, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    out_rows = rows.to(tl.int64) if GATHER else pairs
    out = out_ptr + out_rows[:, None] * stride_out + n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])


@triton.jit
def _down_grad_epilogue(g, rows, row_mask, expert, block, gu_ptr, weights_ptr, order_ptr, dgu_ptr, hw_ptr, dw_ptr,
                        bias_grad_ptr, S, inter, alpha, limit, CLAMPED: tl.constexpr, INTERLEAVED: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """From g = dy[token(r)] @ W_d[e] (fp32, BLOCK_N columns of I from column block ``block``), with h
    recomputed from gu: this block's share of dw[pair] = <g, h>, dgu = gating'(gu) * w * g (written
    over gu), and hw = w * h (for dW_d); with HAS_BIAS dgu summed over the tile's rows (all of one
    expert) is added to bias_grad (fp32 [E, 2I])."""
    pairs = tl.load(order_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    j0 = block * BLOCK_N
    j = j0 + tl.arange(0, BLOCK_N)
    j_mask = j < inter
    gate, up = _load_gate_up(gu_ptr, rows, row_mask, j0, inter, INTERLEAVED, BLOCK_M, BLOCK_N)
    h, dgate, dup = _gating(gate, up, alpha, limit, CLAMPED)
    h = h.to(hw_ptr.dtype.element_ty).to(tl.float32)  # h as the forward's down projection read it
    w = tl.load(weights_ptr + pairs, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    tl.store(dw_ptr + block * S + pairs, tl.sum(g * h, axis=1), mask=row_mask)
    dh = g * w
    dgate *= dh
    dup *= dh
    _store_gate_up(dgu_ptr, rows, row_mask, j0, inter, dgate, dup, INTERLEAVED, BLOCK_M, BLOCK_N)
    _, mask = _gate_up_rows(rows, row_mask, j0, inter, BLOCK_N)
    tl.store(hw_ptr + rows[:, None].to(tl.int64) * inter + j[None, :], (h * w).to(hw_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:  # rows without a pair have g = 0, hence dgate = dup = 0
        bias_grad = bias_grad_ptr + expert * 2 * inter
        if INTERLEAVED:
            gate_col, up_col = 2 * j, 2 * j + 1
        else:
            gate_col, up_col = j, inter + j
        tl.atomic_add(bias_grad + gate_col, tl.sum(dgate, axis=0), mask=j_mask)
        tl.atomic_add(bias_grad + up_col, tl.sum(dup, axis=0), mask=j_mask)


@triton.jit
def _down_backward_kernel(
    dy_ptr, w_ptr, gu_ptr, weights_ptr, order_ptr, tiles_ptr, dgu_ptr, hw_ptr, dw_ptr, bias_grad_ptr,
    stride_dy, stride_we, stride_wh, stride_wi,
    n_tiles, num_experts, S, inter, H, TOP_K: tl.constexpr, alpha, limit,
    CLAMPED: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The fused down backward: g = dy[token(r)] @ W_d[e] for BLOCK_N columns of I, then
    ``_down_grad_epilogue`` on it."""
    rows, row_mask, expert, block = _tile(tiles_ptr, n_tiles, tl.cdiv(inter, BLOCK_N), BLOCK_M)
    if expert >= num_experts:
        return
    tokens = tl.load(order_ptr + rows, mask=row_mask, other=0).to(tl.int64) // TOP_K
    j = block * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    a_ptrs = dy_ptr + tokens[:, None] * stride_dy + k[None, :]
    b_ptrs = w_ptr + expert * stride_we + k[:, None] * stride_wh + j[None, :] * stride_wi
    g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g = _rows_times_weight(a_ptrs, b_ptrs, row_mask, j < inter, H, stride_wh, g, DOT_FP32, BLOCK_K)
    _down_grad_epilogue(
        g, rows, row_mask, expert, block, gu_ptr, weights_ptr, order_ptr, dgu_ptr, hw_ptr, dw_ptr, bias_grad_ptr,
        S, inter, alpha, limit, CLAMPED, INTERLEAVED, HAS_BIAS, BLOCK_M, BLOCK_N,
    )  # fmt: skip


@triton.jit
def _down_grad_kernel(
    g_ptr, gu_ptr, weights_ptr, order_ptr, tiles_ptr, dgu_ptr, hw_ptr, dw_ptr, bias_grad_ptr,
    n_tiles, num_experts, S, inter, alpha, limit,
    CLAMPED: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The split down backward's second half: ``_down_grad_epilogue`` on g [S, I] (fp32, sorted rows),
    which ``_pair_output_kernel`` (GATHER) computed."""
    rows, row_mask, expert, block = _tile(tiles_ptr, n_tiles, tl.cdiv(inter, BLOCK_N), BLOCK_M)
    if expert >= num_experts:
        return
    _, mask = _gate_up_rows(rows, row_mask, block * BLOCK_N, inter, BLOCK_N)
    j = block * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.load(g_ptr + rows[:, None].to(tl.int64) * inter + j[None, :], mask=mask, other=0.0)
    _down_grad_epilogue(
        g, rows, row_mask, expert, block, gu_ptr, weights_ptr, order_ptr, dgu_ptr, hw_ptr, dw_ptr, bias_grad_ptr,
        S, inter, alpha, limit, CLAMPED, INTERLEAVED, HAS_BIAS, BLOCK_M, BLOCK_N,
    )  # fmt: skip


@triton.jit
def _weight_grad_kernel(
    a_ptr, b_ptr, order_ptr, bounds_ptr, out_ptr,
    stride_b, stride_oe, stride_om, stride_on,
    n_m, n_n, TOP_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """out[e] = sum over expert e's sorted rows r of a[r]^T b[token(r)], [n_m, n_n] per expert (a:
    [S, n_m] in sorted order, b: [tokens, n_n] read through the permutation), written through
    strides. dW_d is a = hw, b = dy; dW_gu is a = dgu, b = x. An expert without rows gets zeros.
    TOP_K is a compile-time constant in every kernel: token(r) = order[r] // TOP_K, computed here
    for every row of every step of the reduction, is then a shift or a multiply instead of a
    ~30-instruction integer division by a runtime value."""
    expert = tl.program_id(1).to(tl.int64)
    blocks_n = tl.cdiv(n_n, BLOCK_N)
    m = (tl.program_id(0) // blocks_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = (tl.program_id(0) % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = m < n_m
    n_mask = n < n_n
    start = tl.load(bounds_ptr + expert)
    end = tl.load(bounds_ptr + expert + 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_K):
        rows = r0 + tl.arange(0, BLOCK_K)
        r_mask = rows < end
        tokens = (tl.load(order_ptr + rows, mask=r_mask, other=0) // TOP_K).to(tl.int64)
        a = tl.load(
            a_ptr + rows[None, :].to(tl.int64) * n_m + m[:, None], mask=m_mask[:, None] & r_mask[None, :], other=0.0
        )
        b = tl.load(b_ptr + tokens[:, None] * stride_b + n[None, :], mask=r_mask[:, None] & n_mask[None, :], other=0.0)
        acc = _dot(a, b, acc, DOT_FP32)
    out = out_ptr + expert * stride_oe + m[:, None] * stride_om + n[None, :] * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


# ----------------------------------------------------------------------------- launch settings

# Rows of sorted pairs per tile. 128 fills an H100/H200 warpgroup MMA; a tile never spans two
# experts, so each expert's last tile is partly empty (at 512 rows an expert, 1/8 of the work on
# average). The interpreter runs 16 so that tiny tests cross tile boundaries.
BLOCK_M = 16 if interpreting() else 128
INTERPRETER_BLOCKS = {"BLOCK_N": 16, "BLOCK_K": 16}
# Sorted pairs from which the kernels are autotuned (the first config of each list otherwise).
AUTOTUNE_MIN_PAIRS = 8192
# The down backward in two kernels: g = dy[token] @ W_d^T alone (the pair_output GEMM, GATHER: the
# tile sizes of a plain GEMM, measured at 514 TFLOP/s in the forward at GPT-OSS's shape), written
# as fp32 [S, I], then an elementwise pass for the rest (``_down_grad_kernel``). The fused kernel
# carries that epilogue's registers through its GEMM: on the H200 it ran 128 x 64 tiles at 116
# TFLOP/s at GPT-OSS's shape (before the row grouping). The split costs one write and one read of g:
# 2 x 377 MB (0.18 ms at 4.2 TB/s) at GPT-OSS's shape, 2 x 201 MB at Qwen3-30B-A3B's. False: the
# fused kernel, kept to compare on the GPU (bench_moe.py's ``ours_fused``).
SPLIT_DOWN_BACKWARD = True
# Columns of I per program of ``_down_grad_kernel`` (elementwise: no tuning), over 8 warps: 32 values
# a thread per [BLOCK_M, 64] tensor, of which the gating holds about six at once.
DOWN_GRAD_BLOCK_N = 16 if interpreting() else 64


def _configs(*settings):
    return [
        triton.Config(dict(zip(("BLOCK_N", "BLOCK_K", "BLOCK_M"), blocks)), num_warps=warps, num_stages=stages)
        for *blocks, warps, stages in settings
    ]


# (BLOCK_N, BLOCK_K[, BLOCK_M], warps, stages), autotuned from AUTOTUNE_MIN_PAIRS (the first of
# each list below that). On the H200 (session 7) at the Qwen3-30B-A3B and GPT-OSS-20B shapes the picks
# were: gate_up 128x64 (tile 128 x 256), pair_output 256x64, down_backward 64x64 over 4 warps,
# weight_grad 128x32 or 128x64 (256x64 for GPT-OSS's dW_gu). The gate/up kernel's tile is 2 BLOCK_N
# wide. The settings after the first line of a list are for GPT-OSS's few experts with many rows
# (~1024 each at 8192 tokens) and widths of 2880 = 45 x 64 (22.5 x 128: a 128- or 256-wide block
# wastes 2-7% of its columns on the last one): gate/up pairs in blocks of 64 over 8 warps; a 128 x
# 128 down_backward tile with a deeper pipeline (a row block of dy read once per 128 columns of I
# rather than 64, over its H = 2880 reduction); weight-gradient tiles of 256 rows (half the re-reads
# of the gathered operand per expert) or 256 columns over 4 stages. Each setting costs ~1 s of
# compiling on a first call.
CONFIGS = {
    "gate_up": _configs((128, 64, 8, 3), (64, 64, 4, 4), (128, 64, 8, 4), (128, 32, 8, 4), (64, 64, 8, 4)),
    "pair_output": _configs((128, 64, 4, 4), (128, 64, 8, 3), (256, 64, 8, 3), (256, 64, 8, 4)),
    "down_backward": _configs((64, 64, 4, 4), (64, 64, 8, 4), (64, 128, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4)),
    "weight_grad": _configs(
        (128, 64, 128, 8, 3), (128, 32, 128, 4, 4), (128, 32, 128, 4, 5), (256, 32, 128, 8, 4), (256, 64, 128, 8, 3),
        (128, 64, 256, 8, 3), (256, 64, 128, 8, 4),
    ),
}  # fmt: skip
# (kernel, autotune key, arguments the autotuner must restore after each trial: the backward kernel
# writes dgu over gu and adds into the bias gradient).
KERNELS = {
    "gate_up": (_gate_up_kernel, ["inter", "H"], []),
    "pair_output": (_pair_output_kernel, ["n_k", "n_out", "GATHER"], []),
    "down_backward": (_down_backward_kernel, ["inter", "H"], ["gu_ptr", "bias_grad_ptr"]),
    "weight_grad": (_weight_grad_kernel, ["n_m", "n_n"], []),
}
_TUNED = {}


def _launch(name, grid, big, *args, **constexprs):
    """Launch kernel ``name``; ``grid(blocks)`` gives the grid from the config's block sizes."""
    kernel, key, restore = KERNELS[name]
    if interpreting():
        blocks = dict(INTERPRETER_BLOCKS, **({"BLOCK_M": 16} if name == "weight_grad" else {}))
        kernel[grid(blocks)](*args, **constexprs, **blocks)
    elif big:
        if name not in _TUNED:
            _TUNED[name] = triton.autotune(CONFIGS[name], key=key, restore_value=restore)(kernel)
        _TUNED[name][lambda meta: grid(meta)](*args, **constexprs)
    else:
        config = CONFIGS[name][0]
        kernel[grid(config.kwargs)](
            *args, **constexprs, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
        )


def _narrowest(name: str) -> int:
    """Smallest BLOCK_N kernel ``name`` may run with: buffers of per-block partials are sized by it."""
    if interpreting():
        return INTERPRETER_BLOCKS["BLOCK_N"]
    if name == "down_backward" and SPLIT_DOWN_BACKWARD:
        return DOWN_GRAD_BLOCK_N
    return min(c.kwargs["BLOCK_N"] for c in CONFIGS[name])


def _route(top_k_index: torch.Tensor, num_experts: int):
    """Sort the pairs by expert: ``(order, bounds, tiles, n_tiles)``. order[r] is the pair (token *
    top_k + slot) at sorted row r; expert e owns rows bounds[e]:bounds[e + 1], and pairs routed to
    ``num_experts`` (transformers' "no expert here" index) the rows after. tiles holds, per tile,
    its first row, its end and its expert (num_experts for the no-expert rows, which the output
    kernels write as zeros); a fixed count of tiles, the most any routing needs, so nothing is read
    back to the host."""
    flat = top_k_index.reshape(-1)
    sorted_experts, order = torch.sort(flat, stable=True)
    groups = torch.arange(num_experts + 2, device=flat.device, dtype=flat.dtype)
    bounds = torch.searchsorted(sorted_experts, groups)
    tiles_per_group = (bounds[1:] - bounds[:-1] + BLOCK_M - 1) // BLOCK_M
    tile_end = tiles_per_group.cumsum(0)
    n_tiles = cdiv(flat.numel(), BLOCK_M) + num_experts + 1
    ids = torch.arange(n_tiles, device=flat.device)
    group = torch.searchsorted(tile_end, ids, right=True)
    g = group.clamp(max=num_experts)
    row0 = bounds[g] + (ids - tile_end[g] + tiles_per_group[g]) * BLOCK_M
    row_end = torch.where(group <= num_experts, bounds[g + 1], 0)
    tiles = torch.stack([row0, row_end, group]).to(torch.int32)
    return order.to(torch.int32), bounds.to(torch.int32), tiles, n_tiles


def _dims(gate_up_proj, is_transposed):
    """(I, H, gate_up strides over (2I, H), down strides over (H, I)) of either layout."""
    if is_transposed:
        _, hidden, two_i = gate_up_proj.shape
        return two_i // 2, hidden, (2, 1), (2, 1)
    _, two_i, hidden = gate_up_proj.shape
    return two_i // 2, hidden, (1, 2), (1, 2)


def _axis_strides(t, axes):
    return tuple(t.stride(a) for a in axes)


def fused_moe_forward(x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias,
                      is_transposed, is_concatenated, alpha, limit):  # fmt: skip
    """Triton forward: ``(y, gu, routing)`` with gu the [S, 2I] pre-activation kept for backward."""
    (T, H), K, E = x.shape, top_k_index.shape[1], gate_up_proj.shape[0]
    inter, _, gu_axes, down_axes = _dims(gate_up_proj, is_transposed)
    S = T * K
    routing = _route(top_k_index, E)
    order, bounds, tiles, n_tiles = routing
    big = S >= AUTOTUNE_MIN_PAIRS
    gu = torch.empty(S, 2 * inter, dtype=x.dtype, device=x.device)
    h = torch.empty(S, inter, dtype=x.dtype, device=x.device)
    clamped = alpha is not None
    bias = gate_up_proj_bias if gate_up_proj_bias is not None else gate_up_proj
    _launch(
        "gate_up", lambda m: (n_tiles * cdiv(inter, m["BLOCK_N"]),), big,
        x, gate_up_proj, bias, gu, h, order, tiles,
        x.stride(0), gate_up_proj.stride(0), *_axis_strides(gate_up_proj, gu_axes),
        bias.stride(0), bias.stride(-1),
        n_tiles, E, inter, H, K, float(alpha or 0.0), float(limit or 0.0),
        CLAMPED=clamped, HAS_BIAS=gate_up_proj_bias is not None, INTERLEAVED=not is_concatenated,
        DOT_FP32=DOT_FP32, BLOCK_M=BLOCK_M,
    )  # fmt: skip
    out = torch.empty(S, H, dtype=x.dtype, device=x.device)
    bias = down_proj_bias if down_proj_bias is not None else down_proj
    down_i, down_h = _axis_strides(down_proj, down_axes[::-1])
    _launch(
        "pair_output", lambda m: (n_tiles * cdiv(H, m["BLOCK_N"]),), big,
        h, down_proj, bias, top_k_weights, out, order, tiles,
        h.stride(0), down_proj.stride(0), down_i, down_h, bias.stride(0), out.stride(0),
        n_tiles, E, inter, H, K,
        HAS_BIAS=down_proj_bias is not None, WEIGHTED=True, GATHER=False, DOT_FP32=DOT_FP32, BLOCK_M=BLOCK_M,
    )  # fmt: skip
    y = out if K == 1 else out.view(T, K, H).sum(1)
    return y, gu, routing


def fused_moe_backward(dy, x, gate_up_proj, down_proj, top_k_index, top_k_weights, down_proj_bias, gu, routing,
                       is_transposed, is_concatenated, alpha, limit, has_gate_up_bias, needs):  # fmt: skip
    """Triton backward: gradients of (x, gate_up_proj, down_proj, top_k_weights, gate_up_proj_bias,
    down_proj_bias), None where ``needs`` (the same six flags) says no. Overwrites gu with dgu."""
    (T, H), K, E = x.shape, top_k_index.shape[1], gate_up_proj.shape[0]
    inter, _, gu_axes, down_axes = _dims(gate_up_proj, is_transposed)
    S = T * K
    order, bounds, tiles, n_tiles = routing
    big = S >= AUTOTUNE_MIN_PAIRS
    dy = dy.contiguous()
    dgu = gu  # each program reads its gate/up block before writing dgate/dup there: no second [S, 2I]
    hw = torch.empty(S, inter, dtype=x.dtype, device=x.device)
    dw_parts = torch.zeros(cdiv(inter, _narrowest("down_backward")), S, device=x.device)
    bias_sums = torch.zeros(E, 2 * inter, device=x.device) if has_gate_up_bias and needs[4] else dw_parts
    gating = dict(CLAMPED=alpha is not None, INTERLEAVED=not is_concatenated, HAS_BIAS=bias_sums is not dw_parts)
    alpha, limit = float(alpha or 0.0), float(limit or 0.0)
    if SPLIT_DOWN_BACKWARD:
        g = torch.empty(S, inter, dtype=torch.float32, device=x.device)
        _launch(
            "pair_output", lambda m: (n_tiles * cdiv(inter, m["BLOCK_N"]),), big,
            dy, down_proj, down_proj, top_k_weights, g, order, tiles,
            dy.stride(0), down_proj.stride(0), *_axis_strides(down_proj, down_axes), 0, g.stride(0),
            n_tiles, E, H, inter, K,
            HAS_BIAS=False, WEIGHTED=False, GATHER=True, DOT_FP32=DOT_FP32, BLOCK_M=BLOCK_M,
        )  # fmt: skip
        _down_grad_kernel[(n_tiles * cdiv(inter, DOWN_GRAD_BLOCK_N),)](
            g, gu, top_k_weights, order, tiles, dgu, hw, dw_parts, bias_sums,
            n_tiles, E, S, inter, alpha, limit,
            **gating, BLOCK_M=BLOCK_M, BLOCK_N=DOWN_GRAD_BLOCK_N, num_warps=8,
        )  # fmt: skip
        del g
    else:
        _launch(
            "down_backward", lambda m: (n_tiles * cdiv(inter, m["BLOCK_N"]),), big,
            dy, down_proj, gu, top_k_weights, order, tiles, dgu, hw, dw_parts, bias_sums,
            dy.stride(0), down_proj.stride(0), *_axis_strides(down_proj, down_axes),
            n_tiles, E, S, inter, H, K, alpha, limit,
            **gating, DOT_FP32=DOT_FP32, BLOCK_M=BLOCK_M,
        )  # fmt: skip
    dx = d_gate_up = d_down = d_weights = d_gate_up_bias = d_down_bias = None
    if bias_sums is not dw_parts:
        d_gate_up_bias = bias_sums.to(x.dtype)
    if needs[3]:
        d_weights = dw_parts.sum(0).view(T, K)
        if down_proj_bias is not None:  # <dy, down bias of the pair's expert>; 0 for no expert
            per_expert = torch.nn.functional.pad(dy.float() @ down_proj_bias.float().t(), (0, 1))
            d_weights = d_weights + per_expert.gather(1, top_k_index.long())
        d_weights = d_weights.to(top_k_weights.dtype)
    del dw_parts
    if needs[5]:  # sum over the expert's pairs of w * dy[token]: the dense [T, E] routing matrix
        dense = torch.zeros(T, E + 1, device=x.device).scatter_add_(1, top_k_index.long(), top_k_weights.float())
        d_down_bias = (dense[:, :E].t() @ dy.float()).to(down_proj_bias.dtype)
    # Largest buffers last, each freed once read: the peak is dgu + the weight gradients + dx.
    if needs[2]:
        d_down = torch.empty_like(down_proj)
        _launch(
            "weight_grad", lambda m: (cdiv(inter, m["BLOCK_M"]) * cdiv(H, m["BLOCK_N"]), E), big,
            hw, dy, order, bounds, d_down,
            dy.stride(0), d_down.stride(0), *_axis_strides(d_down, down_axes[::-1]),
            inter, H, K,
            DOT_FP32=DOT_FP32,
        )  # fmt: skip
    del hw
    if needs[0]:
        dx_pairs = torch.empty(S, H, dtype=x.dtype, device=x.device)
        _launch(
            "pair_output", lambda m: (n_tiles * cdiv(H, m["BLOCK_N"]),), big,
            dgu, gate_up_proj, gate_up_proj, top_k_weights, dx_pairs, order, tiles,
            dgu.stride(0), gate_up_proj.stride(0), *_axis_strides(gate_up_proj, gu_axes), 0, dx_pairs.stride(0),
            n_tiles, E, 2 * inter, H, K,
            HAS_BIAS=False, WEIGHTED=False, GATHER=False, DOT_FP32=DOT_FP32, BLOCK_M=BLOCK_M,
        )  # fmt: skip
        dx = dx_pairs if K == 1 else dx_pairs.view(T, K, H).sum(1)
        del dx_pairs
    if needs[1]:
        d_gate_up = torch.empty_like(gate_up_proj)
        _launch(
            "weight_grad", lambda m: (cdiv(2 * inter, m["BLOCK_M"]) * cdiv(H, m["BLOCK_N"]), E), big,
            dgu, x, order, bounds, d_gate_up,
            x.stride(0), d_gate_up.stride(0), *_axis_strides(d_gate_up, gu_axes),
            2 * inter, H, K,
            DOT_FP32=DOT_FP32,
        )  # fmt: skip
    return dx, d_gate_up, d_down, d_weights, d_gate_up_bias, d_down_bias


# ----------------------------------------------------------------------------- reference and Function


def _split_gate_up(gate_up, is_concatenated):
    return gate_up.chunk(2, dim=-1) if is_concatenated else (gate_up[..., ::2], gate_up[..., 1::2])


def _gating_reference(gate, up, alpha, limit):
    if alpha is None:
        return torch.nn.functional.silu(gate) * up
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * gate * torch.sigmoid(gate * alpha)


def fused_moe_reference(
    x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias=None, down_proj_bias=None,
    is_transposed=False, is_concatenated=True, alpha=None, limit=None,
):  # fmt: skip
    """The spec, in plain PyTorch (a loop over the experts, as transformers' eager experts):

    x [T, H], top_k_index [T, K] (values in [0, E]; E routes a pair nowhere), top_k_weights [T, K];
    gate_up_proj [E, 2I, H] and down_proj [E, H, I] (``is_transposed``: [E, H, 2I] and [E, I, H]);
    gate and up are the two halves of the 2I axis, or its even and odd entries when not
    ``is_concatenated``; optional biases [E, 2I] and [E, H]. Gating is ``silu(gate) * up``, or with
    ``alpha`` and ``limit`` GPT-OSS's ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)``,
    ``g = gate.clamp(max=limit)``. Returns y [T, H] = sum_k w[t, k] * (down(gating(gate_up(x[t])))),
    accumulated in fp32 (at least)."""
    out = torch.zeros(x.shape, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    for e in range(gate_up_proj.shape[0]):
        token, slot = torch.where(top_k_index == e)
        if token.numel() == 0:
            continue
        w_gate_up = gate_up_proj[e] if is_transposed else gate_up_proj[e].t()
        w_down = down_proj[e] if is_transposed else down_proj[e].t()
        gate_up = x[token] @ w_gate_up
        if gate_up_proj_bias is not None:
            gate_up = gate_up + gate_up_proj_bias[e]
        o = _gating_reference(*_split_gate_up(gate_up, is_concatenated), alpha, limit) @ w_down
        if down_proj_bias is not None:
            o = o + down_proj_bias[e]
        out = out.index_add(0, token, (o * top_k_weights[token, slot, None]).to(out.dtype))
    return out.to(x.dtype)


def _check_inputs(x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias,
                  is_transposed, alpha, limit):  # fmt: skip
    for name, t in (
        ("x", x),
        ("gate_up_proj", gate_up_proj),
        ("down_proj", down_proj),
        ("top_k_weights", top_k_weights),
    ):
        if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"`{name}` must be a floating-point torch.Tensor, got {getattr(t, 'dtype', type(t))}.")
    if not isinstance(top_k_index, torch.Tensor) or top_k_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"`top_k_index` must be an int64 or int32 tensor, got {getattr(top_k_index, 'dtype', None)}.")
    if x.dim() != 2 or gate_up_proj.dim() != 3 or down_proj.dim() != 3:
        raise ValueError(
            f"`x` must be [tokens, hidden] and the weights [experts, ., .]; got x {tuple(x.shape)}, "
            f"gate_up_proj {tuple(gate_up_proj.shape)}, down_proj {tuple(down_proj.shape)}: flatten x's leading dims."
        )
    E = gate_up_proj.shape[0]
    inter, H, _, _ = _dims(gate_up_proj, is_transposed)
    layout = "[E, H, 2I] and [E, I, H] (is_transposed)" if is_transposed else "[E, 2I, H] and [E, H, I]"
    expected_down = (E, inter, H) if is_transposed else (E, H, inter)
    if gate_up_proj.shape[1 if is_transposed else 2] % 1 or 2 * inter != gate_up_proj.shape[2 if is_transposed else 1]:
        raise ValueError(f"`gate_up_proj` must have an even 2I axis: {layout}; got {tuple(gate_up_proj.shape)}.")
    if tuple(down_proj.shape) != expected_down or x.shape[1] != H:
        raise ValueError(
            f"Shapes disagree: x {tuple(x.shape)}, gate_up_proj {tuple(gate_up_proj.shape)}, down_proj "
            f"{tuple(down_proj.shape)}; expected weights {layout} with H = x.shape[1]."
        )
    if top_k_index.dim() != 2 or top_k_index.shape[0] != x.shape[0] or top_k_weights.shape != top_k_index.shape:
        raise ValueError(
            f"`top_k_index` and `top_k_weights` must both be [tokens, top_k] with x's {x.shape[0]} tokens; got "
            f"{tuple(top_k_index.shape)} and {tuple(top_k_weights.shape)}."
        )
    for name, bias, shape in (
        ("gate_up_proj_bias", gate_up_proj_bias, (E, 2 * inter)),
        ("down_proj_bias", down_proj_bias, (E, H)),
    ):
        if bias is not None and tuple(bias.shape) != shape:
            raise ValueError(f"`{name}` must be {list(shape)}, got {tuple(bias.shape)}.")
    if (alpha is None) != (limit is None):
        raise ValueError("`alpha` and `limit` go together (GPT-OSS's clamped gating): pass both or neither.")
    tensors = [x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias]
    if any(t is not None and t.device != x.device for t in tensors):
        raise ValueError("All tensors must be on x's device.")
    if any(t is not None and t.dtype != x.dtype for t in (gate_up_proj, down_proj, gate_up_proj_bias, down_proj_bias)):
        raise TypeError(f"The weights and biases must have x's dtype ({x.dtype}): cast the module or the input.")
    # Checked on the device (no host synchronization): an index out of [0, E] would be dropped silently.
    torch._assert_async(
        ((top_k_index >= 0) & (top_k_index <= E)).all(), f"`top_k_index` values must lie in [0, {E}] ({E} experts)."
    )


class LigerFusedMoEFunction(LigerFunction):
    """The experts block as one autograd node (see the module docstring). ``forward(x, gate_up_proj,
    down_proj, top_k_index, top_k_weights, gate_up_proj_bias=None, down_proj_bias=None,
    is_transposed=False, is_concatenated=True, alpha=None, limit=None)`` -> y [T, H]; arguments as in
    ``fused_moe_reference``. Gradients flow to x, both weights, both biases and top_k_weights."""

    @staticmethod
    def forward(ctx, x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias=None,
                down_proj_bias=None, is_transposed=False, is_concatenated=True, alpha=None, limit=None):  # fmt: skip
        _check_inputs(x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias,
                      is_transposed, alpha, limit)  # fmt: skip
        args = (x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias)
        ctx.use_triton = use_triton(x) and x.dtype != torch.float64 and x.shape[0] > 0
        if not ctx.use_triton:
            return fallback_forward(ctx, fused_moe_reference, *args, is_transposed, is_concatenated, alpha, limit)
        x = x.contiguous()
        # In x's dtype, as the weights (an fp32 router's under autocast, whose softmax runs in fp32): its
        # gradient comes out in that dtype too, and autograd casts it back.
        top_k_weights = top_k_weights.to(x.dtype).contiguous()
        # Autocast off: CUDA's runs the top-k sum in fp32, which made y (and so dy, met by bf16 weights in
        # the backward's first GEMM: the Triton compile error of test_liger_experts_under_autocast on the
        # H200, which casting top_k_weights had not fixed) fp32.
        with torch.autocast(x.device.type, enabled=False):
            y, gu, routing = fused_moe_forward(
                x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias,
                down_proj_bias, is_transposed, is_concatenated, alpha, limit,
            )  # fmt: skip
        ctx.save_for_backward(x, gate_up_proj, down_proj, top_k_index, top_k_weights, down_proj_bias, gu, *routing[:3])
        ctx.n_tiles = routing[3]
        ctx.gu_spent = False
        ctx.options = (is_transposed, is_concatenated, alpha, limit, gate_up_proj_bias is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        if not ctx.use_triton:
            return fallback_backward(ctx, dy)
        if ctx.gu_spent:
            raise RuntimeError(
                "LigerFusedMoEFunction's backward ran twice (retain_graph=True): its saved activations are "
                "consumed by the first one. Run the forward again, or set LIGER_KERNEL_IMPL=torch."
            )
        ctx.gu_spent = True
        x, gate_up_proj, down_proj, top_k_index, top_k_weights, down_proj_bias, gu, *routing = ctx.saved_tensors
        wanted = (*ctx.needs_input_grad, False, False)  # the biases may not have been passed
        needs = [wanted[i] for i in (0, 1, 2, 4, 5, 6)]
        with torch.autocast(x.device.type, enabled=False):  # as the forward (a backward called inside autocast)
            dx, d_gate_up, d_down, d_weights, d_gate_up_bias, d_down_bias = fused_moe_backward(
                dy, x, gate_up_proj, down_proj, top_k_index, top_k_weights, down_proj_bias, gu,
                (*routing, ctx.n_tiles), *ctx.options, needs,
            )  # fmt: skip
        return dx, d_gate_up, d_down, None, d_weights, d_gate_up_bias, d_down_bias, None, None, None, None
