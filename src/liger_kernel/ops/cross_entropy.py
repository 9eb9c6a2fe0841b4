"""Cross-entropy over a large vocabulary, forward and backward in one kernel.

One program per row loops over the vocabulary twice: an online max / sum-exp in fp32 gives the
log-sum-exp (and the argmax, the smoothing sum), then a second loop writes the gradient
``softmax - onehot`` (with the smoothing, class-weight, z-loss and softcap terms, already scaled
for the reduction) over the logits. Forward plus backward is therefore 3 passes over the logits
(read, read, write) and no memory beyond the ``[BT]`` per-row results.

Backward: the stored gradient is multiplied by the upstream gradient (per row for
``reduction="none"``) by a small kernel that reads that gradient on the device and does nothing
where it is exactly 1.0, so the usual ``loss.backward()`` returns the stored gradient as it is for
the cost of one tiny launch, with no host sync (a host-side ``== 1`` test would sync every step).

Labels outside ``[0, V)`` other than ``ignore_index`` are an error: the kernel raises a flag while
it reads the label (no extra pass). On CPU the flag raises a ValueError at once. On a GPU, reading
it would cost a host sync per call (2.17 ms -> 2.74 ms at 8192 x 128256 on H100), so by default it
goes to an asynchronous device-side assert, as PyTorch's own cross-entropy does with bad labels;
``LIGER_KERNEL_CHECK_LABELS=sync`` reads it on the host for a Python ValueError instead.

Per non-ignored token ``i`` with label ``y``, logits ``z`` (after ``z = softcap * tanh(x / softcap)``
when ``softcap`` is set), ``lse = logsumexp(z)``, smoothing ``eps``, class weights ``w`` (all ones
when absent) and ``W = sum(w)``::

    loss_i = (1 - eps) * w[y] * (lse - z[y]) + eps / V * (W * lse - sum_c w[c] * z[c])
             + lse_square_scale * lse**2

which is ``F.cross_entropy(..., weight, label_smoothing)`` plus the z-loss. ``mean`` divides the
sum over tokens by the normalizer PyTorch uses, ``sum(w[y])`` over non-ignored tokens (their count
without weights), z-loss included; ignored tokens contribute 0 and zero gradient, and a batch with
no normalizer (all ignored) gives loss 0, never NaN. With token scaling (the fused linear op's
``use_token_scaling``) each token's loss, z-loss included, is multiplied by the detached ``p[y]``.
The z-loss is not multiplied by the class weights. ``token_accuracy`` is a scalar for every
reduction; ``predicted_tokens`` holds ``ignore_index`` at ignored tokens.
"""

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
def _ce_kernel(
    x_ptr,  # [N, V] logits, unit column stride; the gradient overwrites them
    stride_x,
    y_ptr,  # [N] labels
    w_ptr,  # [V] fp32 class weights (HAS_WEIGHT)
    norm_ptr,  # [1] fp32 mean normalizer, already 1 where it would be 0 (MEAN)
    wsum_ptr,  # [1] fp32 sum of the class weights (HAS_WEIGHT and SMOOTHING)
    gscale_ptr,  # per-row upstream gradient (ROW_SCALE)
    stride_gscale,
    loss_ptr,  # [N] fp32 per-token loss
    z_ptr,  # [N] fp32 per-token z-loss (WRITE_Z)
    pred_ptr,  # [N] int64 argmax (ARGMAX)
    bad_ptr,  # [1] int32 set to 1 when a label is out of range
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
    WRITE_GRAD: tl.constexpr,
    WRITE_Z: tl.constexpr,
    ARGMAX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x  # int64 offset: N * V passes 2^31 at 8192 x 262144
    offs = tl.arange(0, BLOCK)
    y = tl.load(y_ptr + row).to(tl.int64)
    if y == ignore_index:
        tl.store(loss_ptr + row, 0.0)
        if WRITE_Z:
            tl.store(z_ptr + row, 0.0)
        if ARGMAX:
            tl.store(pred_ptr + row, y)
        if WRITE_GRAD:
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                tl.store(x_row + cols, tl.zeros([BLOCK], x_ptr.dtype.element_ty), mask=cols < n_cols)
    else:
        out_of_range = (y < 0) | (y >= n_cols)
        if out_of_range:
            tl.store(bad_ptr, 1)
        y = tl.where(out_of_range, 0, y)

        # Pass 1: per-lane running max and sum of exp, one exp per element and no cross-warp
        # reduction inside the loop (t = exp(-|x - m|) serves both cases of the update); the lanes
        # are combined once at the end. -1e30 rather than -inf keeps masked lanes free of NaN.
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
                x = tl.where(mask, softcap * _tanh(x / softcap), float("-inf"))
            t = tl.exp(-tl.abs(x - m))
            grows = x > m
            d = tl.where(grows, d * t + 1.0, d + t)
            m = tl.where(grows, x, m)
            if SMOOTHING:
                xs = tl.where(mask, x, 0.0)
                if HAS_WEIGHT:
                    xs *= tl.load(w_ptr + cols, mask=mask, other=0.0)
                smooth += xs
        m_row = tl.max(m, 0)
        lse = m_row + tl.log(tl.sum(d * tl.exp(m - m_row), 0))
        if SMOOTHING:
            smooth_sum = tl.sum(smooth, 0)
        if ARGMAX:
            best_row = tl.max(best, 0)
            best_col = tl.min(tl.where(best == best_row, best_idx, n_cols), 0)

        z_y = tl.load(x_row + y).to(tl.float32)
        if SOFTCAP:
            z_y = softcap * _tanh(z_y / softcap)
        nll = lse - z_y
        if HAS_WEIGHT:
            coef_y = (1.0 - eps) * tl.load(w_ptr + y)
        else:
            coef_y = 1.0 - eps
        loss = coef_y * nll
        coef_p = coef_y  # the gradient is coef_p * softmax - coef_y * onehot - eps / V * w
        if SMOOTHING:
            if HAS_WEIGHT:
                wsum = tl.load(wsum_ptr)
            else:
                wsum = n_cols * 1.0
            loss += eps / n_cols * (wsum * lse - smooth_sum)
            coef_p += eps / n_cols * wsum
        z_loss = 0.0
        if Z_LOSS:
            z_loss = lse_square_scale * lse * lse
            loss += z_loss
            coef_p += 2.0 * lse_square_scale * lse
        token_scale = 1.0
        if TOKEN_SCALING:
            token_scale = tl.exp(-nll)  # p[y], a constant for the gradient
            loss *= token_scale
            z_loss *= token_scale
        tl.store(loss_ptr + row, loss)
        if WRITE_Z:
            tl.store(z_ptr + row, z_loss)
        if ARGMAX:
            tl.store(pred_ptr + row, best_col.to(tl.int64))

        # Pass 2: the gradient of this row's (reduced, upstream-scaled) loss over the logits,
        # walking the blocks backwards: the last ones read by pass 1 are the likeliest in L2.
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
                x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
                if SOFTCAP:
                    t = _tanh(x / softcap)
                    x = softcap * t
                g = coef_p * tl.exp(x - lse)
                g = tl.where(cols == y, g - coef_y, g)
                if SMOOTHING:
                    if HAS_WEIGHT:
                        g -= eps / n_cols * tl.load(w_ptr + cols, mask=mask, other=0.0)
                    else:
                        g -= eps / n_cols
                if SOFTCAP:
                    g *= 1.0 - t * t
                tl.store(x_row + cols, (g * scale).to(x_ptr.dtype.element_ty), mask=mask)


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
    over 16: 2.10); below, 4096 over 16 warps (8192x32000: 454 us; 8192 over 32: 468 us)."""
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
):
    """Launch the row kernel on logits ``x`` [n, V] (unit column stride), in place when ``write_grad``."""
    n_rows, n_cols = x.shape
    if n_rows == 0:
        return
    softcap, label_smoothing, lse_square_scale = opts.softcap, opts.label_smoothing, opts.lse_square_scale
    block, warps = ce_settings(n_cols)
    dummy = loss_rows
    _ce_kernel[(n_rows,)](
        x,
        x.stride(0),
        target,
        dummy if weight is None else weight,
        norm,
        dummy if wsum is None else wsum,
        dummy if row_scale is None else row_scale,
        0 if row_scale is None else row_scale.stride(0),
        loss_rows,
        dummy if z_rows is None else z_rows,
        target if pred is None else pred,
        bad,
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
        WRITE_GRAD=write_grad,
        WRITE_Z=z_rows is not None,
        ARGMAX=pred is not None,
        BLOCK=block,
        num_warps=warps,
        num_stages=NUM_STAGES,
    )


def bad_label_message(n_cols: int, ignore_index: int) -> str:
    return (
        f"`target` holds a label outside [0, {n_cols}) that is not ignore_index={ignore_index}: "
        "every label must be a class index of the logits or the ignore_index."
    )


def raise_if_bad_labels(bad: torch.Tensor, n_cols: int, ignore_index: int) -> None:
    """Fail on the kernel's out-of-range-label flag: at once on CPU (or with
    ``LIGER_KERNEL_CHECK_LABELS=sync``), else through an asynchronous device assert (no sync)."""
    message = bad_label_message(n_cols, ignore_index)
    if bad.device.type == "cpu" or os.environ.get("LIGER_KERNEL_CHECK_LABELS") == "sync":
        if bad.item():
            raise ValueError(message)
    else:
        torch._assert_async(bad == 0, message)


def reduce_outputs(loss_rows, z_rows, pred, target, mask, norm, opts: CEOptions, target_shape):
    """The 4-tuple from per-token results: reduced loss and z-loss, token accuracy, predictions
    (each None unless asked; per-token tensors in ``target_shape``)."""
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
    accuracy = None
    if opts.return_token_accuracy:
        accuracy = ((pred == target) & mask).sum(dtype=torch.float32) / mask.sum().clamp(min=1)
    return loss, z_loss, accuracy, pred.view(target_shape) if opts.return_predicted_tokens else None


def cross_entropy_forward(x, target, weight, opts: CEOptions, write_grad):
    """``(loss, z_loss, token_accuracy, predicted_tokens, grad)``; ``grad`` is ``x``'s 2-D view
    holding d(loss)/d(logits), written over the logits, or None when ``write_grad`` is False."""
    n_cols = x.shape[-1]
    x2 = as_rows(x)
    y = target.reshape(-1)
    w, mask, norm, wsum = label_stats(y, weight, opts.ignore_index, n_cols)
    loss_rows, z_rows, pred, bad = row_outputs(x2.shape[0], x2, opts)
    ce_rows_launch(x2, y, w, norm, wsum, loss_rows, z_rows, pred, bad, opts, write_grad)
    raise_if_bad_labels(bad, n_cols, opts.ignore_index)
    outputs = reduce_outputs(loss_rows, z_rows, pred, y, mask, norm, opts, target.shape)
    return *outputs, (x2 if write_grad else None)


# ----------------------------------------------------------------------------- checks


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


def cross_entropy_core(logits, target, weight, opts: CEOptions):
    """The math of the module docstring in plain PyTorch (fp32, or fp64 for fp64 logits)."""
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
    """The spec and the CPU fallback: ``F.cross_entropy`` on the upcast logits with every option.

    Returns ``(loss, z_loss, token_accuracy, predicted_tokens)``: loss in fp32 (fp64 for fp64
    input), reduced as asked; z-loss reduced the same way (None unless ``return_z_loss``); the
    fraction of non-ignored tokens whose argmax is the label (None unless asked); the argmax per
    token as int64, ``ignore_index`` at ignored tokens (None unless asked).
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
    return cross_entropy_core(_input, target, weight, opts)


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


class LigerCrossEntropyFunction(RemembersGradMode):
    """Cross-entropy of logits ``_input`` [BT, V] against ``target`` [BT] with every option of the
    module docstring; returns ``(loss, z_loss, token_accuracy, predicted_tokens)``.

    The gradient is computed in the forward and written over ``_input``'s buffer (documented
    behaviour, it saves a logits-sized tensor): do not reuse the logits after the loss when a
    gradient is computed. Only ``loss`` is differentiable. Under ``torch.no_grad()`` (or when
    ``_input`` needs no gradient) only the loss is computed and the logits are left untouched.
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
        check_float("_input", _input)
        if _input.dim() < 1:
            raise ValueError("`_input` must have a class dimension: [BT, V].")
        opts = CEOptions(
            ignore_index,
            lse_square_scale,
            label_smoothing,
            reduction,
            softcap,
            return_z_loss,
            return_token_accuracy,
            return_predicted_tokens,
        ).check()
        n_cols = _input.shape[-1]
        check_target(target, _input.numel() // max(n_cols, 1), weight, n_cols, {"_input": _input})
        write_grad = caller_grad_mode.enabled and ctx.needs_input_grad[0]
        ctx.use_triton = use_triton(_input) and _input.dtype != torch.float64
        if not ctx.use_triton:
            return reference_forward(ctx, cross_entropy_core, write_grad, _input, target, weight, opts)
        loss, z_loss, accuracy, pred, grad = cross_entropy_forward(_input, target, weight, opts, write_grad)
        ctx.reduction = reduction
        ctx.input_shape = _input.shape
        if grad is not None:
            ctx.save_for_backward(grad)
        return mark_extras_non_differentiable(ctx, (loss, z_loss, accuracy, pred))

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_loss, None, None, None), 11)
        (grad,) = ctx.saved_tensors
        scale_by_upstream(grad, grad_loss, per_row=ctx.reduction == "none")
        return one_grad_per_argument((grad.view(ctx.input_shape),), 11)
