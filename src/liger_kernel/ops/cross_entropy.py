"""Cross-entropy over a large vocabulary: a one-pass forward, and a backward that writes the
gradient over the logits.

One kernel, one program per row. Forward: one read of the logits, an online max / sum-exp in fp32
giving the log-sum-exp (and the argmax, the smoothing sum), hence the loss; the log-sum-exp of each
row is kept for the backward. Backward: a second read and a write of d(loss)/d(logits) (the
smoothing, class-weight, z-loss and softcap terms, the reduction and the upstream gradient folded
in; the upstream gradient is read on the device, no sync). 3 passes over the logits in all (read;
read, write), as in Liger's fused forward, and no memory beyond the ``[BT]`` per-row results.

Why the gradient is written in the backward. Liger writes it over the logits in the forward
without telling autograd, so every later reader of the logits gets dLoss/dlogits: a model's
``outputs.logits``, and any node that saves them afterwards (``loss + (logits**2).mean()`` gave
0.674 instead of 2.599; a version bump in the forward would not catch it: the pow saves the
logits after the bump). Here the logits are intact until the backward. Autograd runs the nodes
recorded after the loss first, so they have read the logits when the backward writes over them;
it then bumps their version counter, so that a node that saved them and runs later (recorded
before the loss, a second loss on the same logits, a second backward with ``retain_graph``)
raises instead of reading a gradient. Logits owned by a leaf (a parameter, a user tensor, a view
of one) are never written: their gradient gets a new ``[BT, V]`` buffer, as their ``.grad`` must
anyway. The cost that remains: after the backward, other logits hold their
gradient and a plain read (not through autograd) sees it; pass ``logits.clone()`` to keep them.
Always taking a new buffer would add ``[BT, V]`` (2.1 GB at 8192 x 128256 bf16) to every step's
peak; this way, as in Liger, one buffer holds the logits and then their gradient.

Loss dtype: the input's, as ``F.cross_entropy`` (loss, z-loss, per-token losses), computed in
fp32 and cast once at the end. Token accuracy is fp32.

Labels outside ``[0, V)`` other than ``ignore_index`` are an error: the forward kernel raises a
flag while it reads the label (no extra pass), which ``LIGER_KERNEL_CHECK_LABELS``, read at each
call, handles: ``sync`` (default) reads it on the host for a catchable ValueError, one host sync
per call (a lone 8192 x 128256 call on H100: 2.17 ms -> 2.74 ms); ``async`` hands it to a
device-side assert, as PyTorch's own cross-entropy does: no sync, but a bad label kills the
process's CUDA context.

Per non-ignored token ``i`` with label ``y``, logits ``z`` (after ``z = softcap * tanh(x / softcap)``
when ``softcap`` is set), ``lse = logsumexp(z)``, smoothing ``eps``, class weights ``w`` (all ones
when absent) and ``W = sum(w)``::

    loss_i = (1 - eps) * w[y] * (lse - z[y]) + eps / V * (W * lse - sum_c w[c] * z[c])
             + lse_square_scale * lse**2

which is ``F.cross_entropy(..., weight, label_smoothing)`` plus the z-loss. ``mean`` divides the
sum over tokens by the normalizer PyTorch uses, ``sum(w[y])`` over non-ignored tokens (their count
without weights), z-loss included; ignored tokens contribute 0 and zero gradient, and a batch with
no normalizer (all tokens ignored, or empty) gives loss 0 where PyTorch gives NaN. With token
scaling (the fused linear op's ``use_token_scaling``) each token's loss, z-loss included, is
multiplied by the detached ``p[y]``. The z-loss is not multiplied by the class weights.
``token_accuracy`` is a scalar for every reduction; ``predicted_tokens`` holds ``ignore_index``
at ignored tokens.

The peer's low-level names work as its callers use them: ``cross_entropy_forward`` (one launch of
3 passes, the gradient written over ``_input``), ``cross_entropy_backward`` (the upstream
gradient applied to it) and the row kernel ``liger_cross_entropy_kernel``.
"""

import functools
import os
import threading
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from liger_kernel.ops.utils import (
    LigerFunction,
    as_rows,
    cdiv,
    check_float,
    check_same_device,
    empty_output,
    fallback_backward,
    fallback_forward,
    next_power_of_2,
)
from liger_kernel.utils import use_triton

# Vocabulary block one program handles per loop step (8192 bf16 = 16 KB in flight per program;
# half that below 64k columns: ce_settings).
MAX_BLOCK = 8192
# Software-pipelining depth of the row loops (Triton's default).
NUM_STAGES = 3


REDUCTIONS = ("mean", "sum", "none")


class CEOptions(NamedTuple):
    """The options of a public cross-entropy entry, built once from its arguments and passed whole
    through the internals (meanings in the module docstring; the last two are the fused linear
    op's)."""

    ignore_index: int = -100
    lse_square_scale: float = 0.0
    label_smoothing: float = 0.0
    reduction: str = "mean"
    softcap: float | None = None
    return_z_loss: bool = False
    return_token_accuracy: bool = False
    return_predicted_tokens: bool = False
    use_token_scaling: bool = False
    accum_dtype: torch.dtype | None = None

    def check(self) -> "CEOptions":
        """``self`` once every option is valid; else an error naming the option."""
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {self.reduction!r}.")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1], got {self.label_smoothing}.")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"`softcap` must be None or > 0, got {self.softcap}.")
        if not isinstance(self.ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int, got {type(self.ignore_index).__name__}.")
        if self.lse_square_scale < 0:
            raise ValueError(f"`lse_square_scale` must be >= 0, got {self.lse_square_scale}.")
        return self


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _tanh(u):
    """tanh in fp32 without libdevice: a series near 0 (where 2*sigmoid(2u)-1 cancels), sigmoid elsewhere."""
    u2 = u * u
    series = u * (1.0 + u2 * (-1.0 / 3.0 + u2 * (2.0 / 15.0 + u2 * (-17.0 / 315.0))))
    return tl.where(tl.abs(u) < 0.125, series, 2.0 * tl.sigmoid(2.0 * u) - 1.0)


@triton.jit
def softcapped(x, softcap, SOFTCAP: tl.constexpr):
    """``(softcap * t, t)`` with ``t = tanh(x / softcap)`` of raw fp32 logits (SOFTCAP; else ``(x, x)``):
    the capped logits and what their derivative ``1 - t^2`` needs (the cross-entropy and fused linear
    cross-entropy kernels cap the logits they read)."""
    if SOFTCAP:
        t = _tanh(x / softcap)
        return softcap * t, t
    return x, x


@triton.jit
def online_logsumexp_step(x, m, d):
    """One block of an online per-lane max ``m`` and sum of ``exp(x - m)`` ``d``: one exp per
    element, lanes combined once by ``finish_logsumexp`` (shared by the cross-entropy kernels)."""
    t = tl.exp(-tl.abs(x - m))
    grows = x > m
    return tl.where(grows, x, m), tl.where(grows, d * t + 1.0, d + t)


@triton.jit
def finish_logsumexp(m, d):
    """The row's log-sum-exp from the per-lane ``(m, d)`` of ``online_logsumexp_step``."""
    m_row = tl.max(m, 0)
    return m_row + tl.log(tl.sum(d * tl.exp(m - m_row), 0))


@triton.jit
def liger_cross_entropy_kernel(
    x_ptr,  # [N, V] logits, unit column stride
    stride_x,
    grad_ptr,  # [N, V] d(loss)/d(logits), unit column stride (WRITE_GRAD); x_ptr itself when in place
    stride_grad,
    y_ptr,  # [N] labels
    w_ptr,  # [V] fp32 class weights (HAS_WEIGHT)
    norm_ptr,  # [1] fp32 mean normalizer, already 1 where it would be 0 (MEAN)
    wsum_ptr,  # [1] fp32 sum of the class weights (HAS_WEIGHT and SMOOTHING)
    gscale_ptr,  # per-row upstream gradient (ROW_SCALE; stride 0 for a scalar)
    stride_gscale,
    loss_ptr,  # [N] fp32 per-token loss (FORWARD)
    z_ptr,  # [N] fp32 per-token z-loss (WRITE_Z)
    pred_ptr,  # [N] int64 argmax (ARGMAX)
    lse_ptr,  # [N] fp32 log-sum-exp: written when FORWARD and SAVE_LSE, read when not FORWARD
    bad_ptr,  # [1] int32 set to 1 when a label is out of range (FORWARD)
    n_cols,
    ignore_index,
    lse_square_scale,
    eps,
    softcap,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    TOKEN_SCALING: tl.constexpr,
    MEAN: tl.constexpr,
    ROW_SCALE: tl.constexpr,
    FORWARD: tl.constexpr,  # pass 1 and the per-row outputs; else the backward alone, from the saved lse
    WRITE_GRAD: tl.constexpr,  # pass 2: the gradient
    WRITE_Z: tl.constexpr,
    ARGMAX: tl.constexpr,
    SAVE_LSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row: the forward (pass 1, a read), the backward (pass 2, a read and a write)
    or both in one launch (the fused linear op's chunks and ``cross_entropy_forward``)."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x  # int64 offset: N * V passes 2^31 at 8192 x 262144
    g_row = grad_ptr + row * stride_grad
    offs = tl.arange(0, BLOCK)
    y = tl.load(y_ptr + row).to(tl.int64)
    if y == ignore_index:
        if FORWARD:
            tl.store(loss_ptr + row, 0.0)
            if WRITE_Z:
                tl.store(z_ptr + row, 0.0)
            if ARGMAX:
                tl.store(pred_ptr + row, y)
        if WRITE_GRAD:
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                tl.store(g_row + cols, tl.zeros([BLOCK], grad_ptr.dtype.element_ty), mask=cols < n_cols)
    else:
        out_of_range = (y < 0) | (y >= n_cols)
        if FORWARD:
            if out_of_range:
                tl.store(bad_ptr, 1)
        y = tl.where(out_of_range, 0, y)

        if FORWARD:
            # Pass 1: per-lane running max and sum of exp, one exp per element and no cross-warp
            # reduction inside the loop (t = exp(-|x - m|) serves both cases of the update); the
            # lanes are combined once at the end. -1e30 rather than -inf keeps masked lanes free of NaN.
            m = tl.full([BLOCK], -1e30, tl.float32)
            d = tl.zeros([BLOCK], tl.float32)
            if SMOOTHING:
                smooth = tl.zeros([BLOCK], tl.float32)
            if ARGMAX:
                best = tl.full([BLOCK], float("-inf"), tl.float32)
                best_idx = tl.zeros([BLOCK], tl.int32)
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                mask = cols < n_cols
                x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
                if ARGMAX:  # on the raw logits: softcap is monotone, and may tie where tanh saturates
                    better = x > best  # strict: each lane keeps its first maximum
                    best_idx = tl.where(better, cols, best_idx)
                    best = tl.where(better, x, best)
                if SOFTCAP:
                    capped, _ = softcapped(x, softcap, SOFTCAP)
                    x = tl.where(mask, capped, float("-inf"))
                m, d = online_logsumexp_step(x, m, d)
                if SMOOTHING:
                    xs = tl.where(mask, x, 0.0)
                    if HAS_WEIGHT:
                        xs *= tl.load(w_ptr + cols, mask=mask, other=0.0)
                    smooth += xs
            lse = finish_logsumexp(m, d)
            if SAVE_LSE:
                tl.store(lse_ptr + row, lse)
        else:
            lse = tl.load(lse_ptr + row)

        z_y, _ = softcapped(tl.load(x_row + y).to(tl.float32), softcap, SOFTCAP)
        nll = lse - z_y
        if HAS_WEIGHT:
            coef_y = (1.0 - eps) * tl.load(w_ptr + y)
        else:
            coef_y = 1.0 - eps
        coef_p = coef_y  # the gradient is coef_p * softmax - coef_y * onehot - eps / V * w
        if SMOOTHING:
            if HAS_WEIGHT:
                wsum = tl.load(wsum_ptr)
            else:
                wsum = n_cols * 1.0
            coef_p += eps / n_cols * wsum
        if Z_LOSS:
            coef_p += 2.0 * lse_square_scale * lse
        token_scale = 1.0
        if TOKEN_SCALING:
            token_scale = tl.exp(-nll)  # p[y], a constant for the gradient

        if FORWARD:
            loss = coef_y * nll
            if SMOOTHING:
                loss += eps / n_cols * (wsum * lse - tl.sum(smooth, 0))
            z_loss = 0.0
            if Z_LOSS:
                z_loss = lse_square_scale * lse * lse
                loss += z_loss
            tl.store(loss_ptr + row, loss * token_scale)
            if WRITE_Z:
                tl.store(z_ptr + row, z_loss * token_scale)
            if ARGMAX:
                best_row = tl.max(best, 0)
                best_col = tl.min(tl.where(best == best_row, best_idx, n_cols), 0)
                tl.store(pred_ptr + row, best_col.to(tl.int64))

        # Pass 2: the gradient of this row's (reduced, upstream-scaled) loss over the logits,
        # walking the blocks backwards: after pass 1 in the same program, the last blocks it read
        # are the likeliest in L2.
        if WRITE_GRAD:
            scale = token_scale
            if MEAN:
                scale = scale / tl.load(norm_ptr)
            if ROW_SCALE:
                scale = scale * tl.load(gscale_ptr + row * stride_gscale).to(tl.float32)
            last = tl.cdiv(n_cols, BLOCK) - 1
            for i in range(0, last + 1):
                cols = (last - i) * BLOCK + offs
                mask = cols < n_cols
                x, t = softcapped(tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32), softcap, SOFTCAP)
                g = coef_p * tl.exp(x - lse)
                g = tl.where(cols == y, g - coef_y, g)
                if SMOOTHING:
                    if HAS_WEIGHT:
                        g -= eps / n_cols * tl.load(w_ptr + cols, mask=mask, other=0.0)
                    else:
                        g -= eps / n_cols
                if SOFTCAP:
                    g *= 1.0 - t * t
                tl.store(g_row + cols, (g * scale).to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_tile(ptr, stride_row, row, cols, n_cols, g):
    p = ptr + row.to(tl.int64) * stride_row + cols
    mask = cols < n_cols
    t = tl.load(p, mask=mask, other=0.0).to(tl.float32)
    tl.store(p, (t * g).to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_kernel(ptr, stride_row, n_rows, n_cols, g_ptr, stride_g, PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    """``t[r, :] *= g[r * stride_g]`` in place, skipping the work where the factor is exactly 1.

    Per row: one program per (row, column block). Scalar: a few programs stride over the tiles
    after checking the factor once, so the usual ``loss.backward()`` (factor 1) costs one tiny
    launch and no host sync."""
    if PER_ROW:
        row = tl.program_id(0)
        g = tl.load(g_ptr + row.to(tl.int64) * stride_g).to(tl.float32)
        if g != 1.0:
            _scale_tile(ptr, stride_row, row, tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), n_cols, g)
    else:
        g = tl.load(g_ptr).to(tl.float32)
        if g != 1.0:
            n_col_blocks = tl.cdiv(n_cols, BLOCK)
            for tile in range(tl.program_id(0), n_rows * n_col_blocks, tl.num_programs(0)):
                cols = (tile % n_col_blocks) * BLOCK + tl.arange(0, BLOCK)
                _scale_tile(ptr, stride_row, tile // n_col_blocks, cols, n_cols, g)


# ----------------------------------------------------------------------------- launchers


def ce_settings(n_cols: int) -> tuple[int, int]:
    """Vocabulary block and warps for one row of ``n_cols`` logits. Measured on H100 (bf16,
    CUDA-graph fwd+bwd, ``benchmarks/sweep_configs.py cross-entropy``): from 64k columns, 8192 over
    32 warps (8192x128256: 2.01 ms, 104% of the 3-pass floor; 8192 over 16 warps 2.16 ms; 4096
    over 16: 2.10); below, 4096 over 16 warps (8192x32000: 454 us; 8192 over 32: 468 us). Measured
    when the forward and backward were one launch; the forward and backward launches reuse them."""
    wide = n_cols >= 65536
    block = min(next_power_of_2(max(n_cols, 1)), MAX_BLOCK if wide else MAX_BLOCK // 2)
    return block, 32 if wide else 16 if block >= 4096 else 8 if block >= 2048 else 4


def scale_by_upstream(t: torch.Tensor, grad_output: torch.Tensor, per_row: bool) -> None:
    """Multiply the stored gradient ``t`` (2-D, unit column stride; or 1-D) in place by the upstream
    gradient: a scalar, or one factor per row of ``t`` when ``per_row``. Exactly-1 factors are
    detected on the device, so the usual ``loss.backward()`` costs one tiny launch and no sync."""
    if t.numel() == 0:
        return
    t2 = t.view(1, -1) if t.dim() == 1 else t
    g = grad_output.reshape(-1) if per_row else grad_output.reshape(1)
    n_rows, n_cols = t2.shape
    block = min(next_power_of_2(n_cols), 4096)
    n_col_blocks = cdiv(n_cols, block)
    grid = (n_rows, n_col_blocks) if per_row else (min(n_rows * n_col_blocks, 1024),)
    _scale_kernel[grid](t2, t2.stride(0), n_rows, n_cols, g, g.stride(0), per_row, block, num_warps=8)


def label_stats(target, weight, ignore_index: int, n_cols: int):
    """Device tensors ``(w, mask, norm, wsum)``: the class weights in fp32 (or None), non-ignored
    tokens, the mean normalizer (1 where it would be 0, so an all-ignored batch gives 0 rather
    than NaN) and ``sum(w)``. No sync."""
    w = None if weight is None else weight.to(torch.float32).contiguous()
    mask = target != ignore_index
    if w is None:
        norm = mask.sum(dtype=torch.float32)
        wsum = None
    else:
        safe = torch.where(mask, target, 0).clamp_(0, n_cols - 1)
        norm = (w[safe] * mask).sum(dtype=torch.float32)
        wsum = w.sum(dtype=torch.float32).reshape(1)
    norm = torch.where(norm != 0, norm, 1.0).reshape(1)
    return w, mask, norm, wsum


def row_outputs(n_rows: int, like: torch.Tensor, opts: CEOptions):
    """The row kernel's outputs ``(loss_rows, z_rows, pred, bad)``: fp32 loss per token, z-loss per
    token (None unless asked), argmax per token (None unless accuracy or predictions are asked)
    and the bad-label flag."""
    loss_rows = empty_output((n_rows,), like, torch.float32)
    z_rows = empty_output((n_rows,), like, torch.float32) if opts.return_z_loss else None
    want_pred = opts.return_token_accuracy or opts.return_predicted_tokens
    pred = torch.empty(n_rows, dtype=torch.int64, device=like.device) if want_pred else None
    bad = torch.zeros(1, dtype=torch.int32, device=like.device)
    return loss_rows, z_rows, pred, bad


def ce_rows_launch(
    x,
    target,
    weight,
    norm,
    wsum,
    loss_rows,
    z_rows,
    pred,
    bad,
    opts: CEOptions,
    write_grad,
    row_scale=None,
    *,
    forward=True,
    lse=None,
    grad=None,
):
    """Launch the row kernel on logits ``x`` [n, V] (unit column stride). ``forward``: pass 1 and
    the per-row outputs, ``lse`` [n] fp32 (if given) receiving each row's log-sum-exp; else only
    the gradient, from the log-sum-exp in ``lse``. ``write_grad``: write d(loss)/d(logits), times
    ``row_scale`` [n] if given, into ``grad`` (default ``x`` itself, in place)."""
    n_rows, n_cols = x.shape
    if n_rows == 0:
        return
    softcap, label_smoothing, lse_square_scale = opts.softcap, opts.label_smoothing, opts.lse_square_scale
    block, warps = ce_settings(n_cols)
    grad = x if grad is None else grad
    dummy = lse if loss_rows is None else loss_rows  # an fp32 tensor for the pointers a launch leaves unread
    liger_cross_entropy_kernel[(n_rows,)](
        x,
        x.stride(0),
        grad,
        grad.stride(0),
        target,
        dummy if weight is None else weight,
        norm,
        dummy if wsum is None else wsum,
        dummy if row_scale is None else row_scale,
        0 if row_scale is None else row_scale.stride(0),
        dummy,
        dummy if z_rows is None else z_rows,
        target if pred is None else pred,
        dummy if lse is None else lse,
        target if bad is None else bad,
        n_cols,
        opts.ignore_index,
        float(lse_square_scale),
        float(label_smoothing),
        float(softcap or 1.0),
        HAS_WEIGHT=weight is not None,
        SMOOTHING=label_smoothing > 0,
        Z_LOSS=lse_square_scale != 0,
        SOFTCAP=softcap is not None,
        TOKEN_SCALING=opts.use_token_scaling,
        MEAN=opts.reduction == "mean",
        ROW_SCALE=row_scale is not None,
        FORWARD=forward,
        WRITE_GRAD=write_grad,
        WRITE_Z=z_rows is not None,
        ARGMAX=pred is not None,
        SAVE_LSE=forward and lse is not None,
        BLOCK=block,
        num_warps=warps,
        num_stages=NUM_STAGES,
    )


def bad_label_message(n_cols: int, ignore_index: int) -> str:
    return (
        f"`target` holds a label outside [0, {n_cols}) that is not ignore_index={ignore_index}: "
        "every label must be a class index of the logits or the ignore_index."
    )


LABEL_CHECKS = ("sync", "async")


def raise_if_bad_labels(bad: torch.Tensor, n_cols: int, ignore_index: int) -> None:
    """Fail on the kernel's out-of-range-label flag, as ``LIGER_KERNEL_CHECK_LABELS`` (read at each
    call) says: ``sync`` (default) reads it on the host and raises a ValueError (one host sync per
    call); ``async`` hands it to ``torch._assert_async``, a device-side assert on a GPU (no sync, but
    a failure kills the process's CUDA context; on CPU it raises at once)."""
    mode = os.environ.get("LIGER_KERNEL_CHECK_LABELS", "sync")
    if mode == "sync":
        if bad.item():
            raise ValueError(bad_label_message(n_cols, ignore_index))
    elif mode == "async":
        torch._assert_async(bad == 0, bad_label_message(n_cols, ignore_index))
    else:
        raise ValueError(f"LIGER_KERNEL_CHECK_LABELS must be one of {LABEL_CHECKS}, got {mode!r}.")


def reduce_outputs(loss_rows, z_rows, pred, target, mask, norm, opts: CEOptions, target_shape, out_dtype=None):
    """The 4-tuple from per-token results: reduced loss and z-loss (cast to ``out_dtype`` when
    given, after the fp32 reduction), token accuracy, predictions (each None unless asked;
    per-token tensors in ``target_shape``)."""
    reduction = opts.reduction
    if reduction == "mean":
        loss = loss_rows.sum() / norm[0]
        z_loss = None if z_rows is None else z_rows.sum() / norm[0]
    elif reduction == "sum":
        loss = loss_rows.sum()
        z_loss = None if z_rows is None else z_rows.sum()
    else:
        loss = loss_rows.view(target_shape)
        z_loss = None if z_rows is None else z_rows.view(target_shape)
    if out_dtype is not None:
        loss = loss.to(out_dtype)
        z_loss = None if z_loss is None else z_loss.to(out_dtype)
    accuracy = None
    if opts.return_token_accuracy:
        accuracy = ((pred == target) & mask).sum(dtype=torch.float32) / mask.sum().clamp(min=1)
    return loss, z_loss, accuracy, pred.view(target_shape) if opts.return_predicted_tokens else None


def cross_entropy_rows(x2, target, weight, opts: CEOptions, write_grad=False, lse=None):
    """The kernel's forward on logits ``x2`` [n, V] (unit column stride): ``(outputs, saved)``, the
    4-tuple in ``x2``'s dtype and ``(w, norm, wsum)`` for ``cross_entropy_grad``. ``write_grad``:
    also write d(loss)/d(logits) over ``x2`` in the same launch (3 passes); ``lse``: an [n] fp32
    buffer that receives each row's log-sum-exp."""
    n_cols = x2.shape[1]
    y = target.reshape(-1)
    w, mask, norm, wsum = label_stats(y, weight, opts.ignore_index, n_cols)
    loss_rows, z_rows, pred, bad = row_outputs(x2.shape[0], x2, opts)
    ce_rows_launch(x2, y, w, norm, wsum, loss_rows, z_rows, pred, bad, opts, write_grad, lse=lse)
    raise_if_bad_labels(bad, n_cols, opts.ignore_index)
    outputs = reduce_outputs(loss_rows, z_rows, pred, y, mask, norm, opts, target.shape, out_dtype=x2.dtype)
    return outputs, (w, norm, wsum)


def cross_entropy_grad(x2, grad, target, saved, lse, grad_loss, opts: CEOptions) -> None:
    """The kernel's backward: d(loss)/d(logits) of ``x2`` [n, V] times the upstream ``grad_loss``
    (a scalar, or one per token for reduction="none") into ``grad`` (``x2`` itself for in place).
    2 passes (read, write); the upstream gradient is read on the device (no sync)."""
    w, norm, wsum = saved
    n_rows = x2.shape[0]
    row_scale = grad_loss.reshape(-1) if opts.reduction == "none" else grad_loss.reshape(1).expand(n_rows)
    ce_rows_launch(
        x2,
        target.reshape(-1),
        w,
        norm,
        wsum,
        None,
        None,
        None,
        None,
        opts,
        True,
        row_scale,
        forward=False,
        lse=lse,
        grad=grad,
    )


# ----------------------------------------------------------------------------- the peer's helpers


def write_back(t: torch.Tensor, rows: torch.Tensor) -> None:
    """After writing into ``rows`` (``as_rows(t)``): copy into ``t`` when ``as_rows`` had to copy,
    and bump ``t``'s version so that autograd sees the write."""
    if rows.data_ptr() != t.data_ptr():
        t.copy_(rows.view(t.shape))
    if not t.is_inference():
        torch.autograd.graph.increment_version(t)


def cross_entropy_forward(
    _input,
    target,
    weight,
    ignore_index,
    lse_square_scale,
    label_smoothing,
    reduction,
    softcap,
    return_z_loss,
    return_token_accuracy=False,
    return_predicted_tokens=False,
):
    """The peer's low-level forward: ``(loss, z_loss, token_accuracy, predicted_tokens, _input)``,
    with ``_input`` [..., V] now holding d(loss)/d(logits) for an upstream gradient of 1 (written
    over the logits, one launch of 3 passes; its version is bumped). Loss and z-loss in
    ``_input``'s dtype. Pass it to ``cross_entropy_backward`` to apply the upstream gradient.
    ``LigerCrossEntropyFunction`` is the autograd-safe entry; this one is for callers that own the
    logits buffer."""
    opts = check_ce_inputs(
        _input,
        target,
        weight,
        CEOptions(
            ignore_index,
            lse_square_scale,
            label_smoothing,
            reduction,
            softcap,
            return_z_loss,
            return_token_accuracy,
            return_predicted_tokens,
        ),
    )
    x2 = as_rows(_input)
    outputs, _ = cross_entropy_rows(x2, target, weight, opts, write_grad=True)
    write_back(_input, x2)
    return *outputs, _input


def cross_entropy_backward(_input, grad_output):
    """The peer's low-level backward: ``_input`` (the gradient from ``cross_entropy_forward``)
    multiplied in place by ``grad_output``, a scalar or one value per token (reduction="none");
    returns ``_input``. Exactly-1 factors cost one tiny launch and no sync."""
    x2 = as_rows(_input)
    per_row = grad_output.numel() != 1
    if per_row and grad_output.numel() != x2.shape[0]:
        raise ValueError(
            f"`grad_output` must be a scalar or hold one value per row of `_input` ({x2.shape[0]}); "
            f"got shape {tuple(grad_output.shape)}."
        )
    scale_by_upstream(x2, grad_output, per_row=per_row)
    write_back(_input, x2)
    return _input


# ----------------------------------------------------------------------------- checks


def check_ce_inputs(_input, target, weight, opts: CEOptions) -> CEOptions:
    """``opts`` once the logits, labels, class weights and options are valid; else an error naming
    the public argument."""
    check_float("input", _input)
    if _input.dim() < 1:
        raise ValueError("`input` must have a class dimension: [BT, V].")
    n_cols = _input.shape[-1]
    check_target(target, _input.numel() // max(n_cols, 1), weight, n_cols, {"input": _input})
    return opts.check()


def check_target(target, n_rows: int, weight, n_cols: int, device_of) -> None:
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise TypeError("`target` must be an integer tensor of class indices (e.g. torch.long).")
    if target.numel() != n_rows:
        raise ValueError(f"`target` has {target.numel()} labels but the input has {n_rows} rows: they must match.")
    if weight is not None:
        check_float("weight", weight)
        if weight.shape != (n_cols,):
            raise ValueError(f"`weight` must have shape ({n_cols},), one weight per class; got {tuple(weight.shape)}.")
    check_same_device(**device_of, target=target, class_weight=weight)


def check_labels_host(target, ignore_index: int, n_cols: int) -> None:
    """The reference's label check (one sync; the kernels check on the device instead)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= n_cols))
    if bool(bad.any()):
        raise ValueError(bad_label_message(n_cols, ignore_index))


# ----------------------------------------------------------------------------- reference


def cross_entropy_core(logits, target, weight, opts: CEOptions, out_dtype=None):
    """The math of the module docstring in plain PyTorch (fp32, or fp64 for fp64 logits); loss and
    z-loss cast to ``out_dtype`` at the end when given."""
    eps, softcap = opts.label_smoothing, opts.softcap
    n_cols = logits.shape[-1]
    target_shape = target.shape
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    raw = logits.reshape(-1, n_cols).to(compute)
    y = target.reshape(-1)
    check_labels_host(y, opts.ignore_index, n_cols)
    mask = y != opts.ignore_index
    safe = torch.where(mask, y, 0)
    z = raw if softcap is None else softcap * torch.tanh(raw / softcap)
    lse = torch.logsumexp(z, dim=-1)
    nll = lse - z.gather(-1, safe[:, None]).squeeze(-1)
    w = None if weight is None else weight.to(compute)
    w_y = 1.0 if w is None else w[safe]
    loss = (1.0 - eps) * w_y * nll
    if eps > 0:
        smooth = n_cols * lse - z.sum(-1) if w is None else w.sum() * lse - (z * w).sum(-1)
        loss = loss + eps / n_cols * smooth
    z_loss = opts.lse_square_scale * lse * lse
    loss = loss + z_loss
    if opts.use_token_scaling:
        p_y = torch.exp(-nll).detach()
        loss, z_loss = loss * p_y, z_loss * p_y
    zero = torch.zeros((), dtype=compute, device=raw.device)
    loss, z_loss = torch.where(mask, loss, zero), torch.where(mask, z_loss, zero)
    norm = mask.sum().to(compute) if w is None else (w_y * mask).sum()
    norm = torch.where(norm != 0, norm, 1.0)
    if opts.reduction == "mean":
        loss, z_loss = loss.sum() / norm, z_loss.sum() / norm
    elif opts.reduction == "sum":
        loss, z_loss = loss.sum(), z_loss.sum()
    else:
        loss, z_loss = loss.view(target_shape), z_loss.view(target_shape)
    if out_dtype is not None:
        loss, z_loss = loss.to(out_dtype), z_loss.to(out_dtype)
    pred = torch.where(mask, raw.argmax(-1), opts.ignore_index)
    accuracy = None
    if opts.return_token_accuracy:
        accuracy = ((pred == y) & mask).sum().to(torch.float32) / mask.sum().clamp(min=1)
    return (
        loss,
        z_loss if opts.return_z_loss else None,
        accuracy,
        pred.view(target_shape) if opts.return_predicted_tokens else None,
    )


def cross_entropy_reference(
    _input,
    target,
    weight=None,
    ignore_index=-100,
    lse_square_scale=0.0,
    label_smoothing=0.0,
    reduction="mean",
    softcap=None,
    return_z_loss=False,
    return_token_accuracy=False,
    return_predicted_tokens=False,
):
    """The spec and the CPU fallback: ``F.cross_entropy`` on the logits upcast to fp32 (fp64 stays
    fp64) with every option.

    Returns ``(loss, z_loss, token_accuracy, predicted_tokens)``: loss in ``_input``'s dtype (as
    ``F.cross_entropy``; cast once at the end), reduced as asked, 0 for an all-ignored or empty
    batch; z-loss reduced the same way (None unless ``return_z_loss``); the fraction of
    non-ignored tokens whose argmax is the label, fp32 (None unless asked); the argmax per token as
    int64, ``ignore_index`` at ignored tokens (None unless asked).
    """
    opts = CEOptions(
        ignore_index,
        lse_square_scale,
        label_smoothing,
        reduction,
        softcap,
        return_z_loss,
        return_token_accuracy,
        return_predicted_tokens,
    )
    return cross_entropy_core(_input, target, weight, opts, out_dtype=_input.dtype)


# ----------------------------------------------------------------------------- autograd


class _CallerGradMode(threading.local):
    enabled = True


caller_grad_mode = _CallerGradMode()


class RemembersGradMode(LigerFunction):
    """Inside ``forward`` grad mode is always off and ``ctx.needs_input_grad`` ignores
    ``torch.no_grad()``: the caller's grad mode is recorded before each application so that
    evaluation skips the gradient work."""

    @staticmethod
    def before_apply():
        caller_grad_mode.enabled = torch.is_grad_enabled()


def mark_extras_non_differentiable(ctx, outputs):
    ctx.mark_non_differentiable(*[o for o in outputs[1:] if o is not None])
    return outputs


def reference_forward(ctx, core, write_grad, *args):
    """The Functions' forward without the kernels: ``core(*args)``, differentiable when
    ``write_grad`` (then ``fallback_backward`` differentiates it)."""
    if not write_grad:
        with torch.no_grad():
            return mark_extras_non_differentiable(ctx, core(*args))
    return mark_extras_non_differentiable(ctx, fallback_forward(ctx, core, *args))


def one_grad_per_argument(grads, n_args: int):
    """``grads`` padded with None to one per forward argument, as autograd wants."""
    return tuple(grads) + (None,) * (n_args - len(grads))


def no_double_backward(grad):
    """Under ``create_graph=True``, ``grad`` behind a node that raises if it is differentiated (the
    kernels have no second derivative), where a constant gradient would make the second derivative
    silently 0 (``once_differentiable`` raises only when the upstream gradient requires grad)."""
    if grad is None or not torch.is_grad_enabled():
        return grad
    error = torch._C._functions.DelayedError(b"the Liger cross-entropy has no second derivative (double backward).", 1)
    return error(grad.detach().requires_grad_())


class LigerCrossEntropyFunction(RemembersGradMode):
    """Cross-entropy of logits ``_input`` [BT, V] against ``target`` [BT] with every option of the
    module docstring; returns ``(loss, z_loss, token_accuracy, predicted_tokens)``, loss and z-loss
    in ``_input``'s dtype as ``F.cross_entropy`` (computed in fp32). An all-ignored or empty batch
    gives loss 0 where ``F.cross_entropy`` gives NaN.

    The forward reads the logits and leaves them intact. The backward writes the gradient over
    them and bumps their version, so that any autograd node that saved them and runs later raises
    (module docstring); logits owned by a leaf (a parameter, a user tensor, a view of one) are never
    written: their gradient gets a new buffer. After the backward, other logits hold their
    gradient: pass ``_input.clone()`` to read them afterwards. Only ``loss`` is differentiable,
    once. Under ``torch.no_grad()`` (or when ``_input`` needs no gradient) only the loss is
    computed.
    """

    @staticmethod
    def forward(
        ctx,
        _input,
        target,
        weight=None,
        ignore_index=-100,
        lse_square_scale=0.0,
        label_smoothing=0.0,
        reduction="mean",
        softcap=None,
        return_z_loss=False,
        return_token_accuracy=False,
        return_predicted_tokens=False,
    ):
        opts = CEOptions(
            ignore_index,
            lse_square_scale,
            label_smoothing,
            reduction,
            softcap,
            return_z_loss,
            return_token_accuracy,
            return_predicted_tokens,
        )
        opts = check_ce_inputs(_input, target, weight, opts)
        write_grad = caller_grad_mode.enabled and ctx.needs_input_grad[0]
        ctx.use_triton = use_triton(_input) and _input.dtype != torch.float64
        if not ctx.use_triton:
            core = functools.partial(cross_entropy_core, out_dtype=_input.dtype)
            return reference_forward(ctx, core, write_grad, _input, target, weight, opts)
        x2 = as_rows(_input)
        lse = torch.empty(x2.shape[0], dtype=torch.float32, device=x2.device) if write_grad else None
        outputs, saved = cross_entropy_rows(x2, target, weight, opts, lse=lse)
        if write_grad:
            copied = x2.data_ptr() != _input.data_ptr()
            leaf_owned = _input.is_leaf or (_input._base is not None and _input._base.is_leaf)
            ctx.in_place = copied or not leaf_owned
            ctx.opts, ctx.input_shape = opts, _input.shape
            ctx.save_for_backward(x2 if copied else _input, target, lse, *saved)
        return mark_extras_non_differentiable(ctx, outputs)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if not ctx.use_triton:
            grad = fallback_backward(ctx, grad_loss, None, None, None)[0]
            return one_grad_per_argument((no_double_backward(grad),), 11)
        try:
            logits, target, lse, *saved = ctx.saved_tensors
        except RuntimeError as error:
            raise RuntimeError(
                "LigerCrossEntropyFunction: the logits were modified in place between the loss's forward "
                "and its backward: by a backward that already wrote a gradient over them (this loss's, "
                "with retain_graph=True, or another Liger cross-entropy on the same logits) or by an "
                "in-place op. Pass `input.clone()` to the loss to use the logits more than once."
            ) from error
        x2 = as_rows(logits)  # a view: the forward saved a copy where one was needed
        grad = x2 if ctx.in_place else torch.empty_like(x2)
        cross_entropy_grad(x2, grad, target, saved, lse, grad_loss, ctx.opts)
        if ctx.in_place:
            torch.autograd.graph.increment_version(logits)
        return one_grad_per_argument((no_double_backward(grad.view(ctx.input_shape)),), 11)
