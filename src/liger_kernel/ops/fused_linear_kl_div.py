"""Fused linear KL divergence: ``F.kl_div(log_softmax(student_input @ student_weight.T / T), target)``
per row, without the ``[N, V]`` student logits.

``target`` [..., V] holds the teacher's probabilities (not log-probabilities: ``eps`` bounds their
log, as ``ops/kl_div.py`` with ``log_target=False``); the temperature divides the student logits
only. Per row ``sum_v t_v (log max(t_v, eps) - log q_v)``; rows whose ``shift_labels`` is
``ignore_index`` count 0 and are not counted. Reductions: ``none`` (one value per row, [...] =
``student_input.shape[:-1]``: the per-element ``[N, V]`` losses are what the fused form avoids),
``sum``, ``mean`` (over the elements of the rows that count) and ``batchmean`` (over those rows);
nothing counting gives 0 rather than NaN. The loss in ``promote_types`` of the student input's and
the target's dtypes.

How: ``head_chunks`` of ``ops/divergence.py`` with one head; per chunk ``_fused_kl_rows_kernel``
makes two passes over the fp32 logits and the target rows (log-sum-exp and ``sum t``; then the
loss and ``dL/dz = (q sum t - t) / T`` times the row's factor). For a scalar reduction every
gradient comes from the forward (fp32 until the backward applies the upstream gradient, then
rounded once); for ``none``, or when the target needs a gradient (``log max(t, eps) + [t >= eps] -
log q``), the backward runs the chunk loop again with the upstream gradient known (2NHV flops more).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from liger_kernel.ops.cross_entropy import (
    RemembersGradMode,
    caller_grad_mode,
    finish_logsumexp,
    one_grad_per_argument,
    online_logsumexp_step,
)
from liger_kernel.ops.divergence import (
    KL_PROB,
    Head,
    as_flat_rows,
    check_accum_dtype,
    check_has_label,
    check_head,
    check_labels,
    check_reduction,
    check_temperature,
    divergence_terms,
    head_chunks,
    logits_rows_launch,
    masked_rows,
    reduction_divisor,
    reference_outputs,
    rounded,
    scale_in_place,
    scaled_grads,
    store_rounded,
    student_grads,
    valid_rows,
)
from liger_kernel.ops.kl_div import compute_dtype, kl_div_elements
from liger_kernel.ops.utils import as_rows, check_float, check_same_device, empty_output, fallback_backward
from liger_kernel.utils import use_triton


@triton.jit
def _fused_kl_rows_kernel(
    z_ptr,  # [R, V] fp32 student logits (before the temperature)
    stride_z,
    t_ptr,  # [R, V] target probabilities, unit column stride
    stride_t,
    loss_ptr,  # [R] fp32 out: the row's KL
    scale_ptr,  # [R] fp32: d(loss)/d(row's KL) (GRAD_Z or GRAD_T)
    dz_ptr,  # [R, V] out: d(loss)/d(logits) in the matmul dtype (GRAD_Z)
    stride_dz,
    dt_ptr,  # [R, V] out: d(loss)/d(target) (GRAD_T)
    stride_dt,
    n_cols,
    inv_temp,
    eps,
    GRAD_Z: tl.constexpr,
    GRAD_T: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One row per program, two passes (module docstring)."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    t_row = t_ptr + row * stride_t
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -1e30, tl.float32)
    d = tl.zeros([BLOCK], tl.float32)
    t_sum = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        mask = cols < n_cols
        m, d = online_logsumexp_step(tl.load(z_row + cols, mask=mask, other=float("-inf")) * inv_temp, m, d)
        t_sum += tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
    lse = finish_logsumexp(m, d)
    t_total = tl.sum(t_sum, 0)
    if GRAD_Z or GRAD_T:
        scale = tl.load(scale_ptr + row)
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        mask = cols < n_cols
        x = tl.load(z_row + cols, mask=mask, other=0.0) * inv_temp - lse
        t = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
        loss, _, gt = divergence_terms(x, t, 0.0, 0.0, 0.0, eps, KL_PROB)
        total += tl.where(mask, loss, 0.0)
        if GRAD_Z:  # d/dz of sum_v -t_v log q_v; the log-prob gradient -t sums to -t_total
            store_rounded(dz_ptr + row * stride_dz + cols, scale * inv_temp * (tl.exp(x) * t_total - t), mask)
        if GRAD_T:
            tl.store(dt_ptr + row * stride_dt + cols, (scale * gt).to(dt_ptr.dtype.element_ty), mask=mask)
    tl.store(loss_ptr + row, tl.sum(total, 0))


def fused_kl_chunks(x, weight, target2, row_scale, needs, temperature, eps, accum_dtype):
    """The chunk loop: ``(loss_rows, grad_x, grad_w, grad_target)``, loss rows fp32 and unmasked;
    gradients (where ``needs`` asks) times ``row_scale`` [N] per row: fp32 input gradient, weight
    gradient blocks in ``accum_dtype`` (None: fp32; see ``head_chunks``), target gradient in its dtype."""
    n_rows, n_vocab = x.shape[0], weight.shape[0]
    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    grad_t = empty_output(target2.shape, target2) if needs[2] else None

    def run_rows(start, end, logits, dlogits):
        (z,), (dz,) = logits, dlogits
        dt = None if grad_t is None else grad_t[start:end]
        t = target2[start:end]
        logits_rows_launch(
            _fused_kl_rows_kernel, end - start, n_vocab,
            z, z.stride(0), t, t.stride(0), loss_rows[start:end], row_scale[start:end],
            z if dz is None else dz, 0 if dz is None else dz.stride(0),
            t if dt is None else dt, 0 if dt is None else dt.stride(0),
            n_vocab, 1.0 / temperature, float(eps),
            GRAD_Z=dz is not None, GRAD_T=dt is not None,
        )  # fmt: skip

    (grad_x,), (grad_w,) = head_chunks([Head(x, weight, needs[0], needs[1])], run_rows, accum_dtype)
    return loss_rows, grad_x, grad_w, grad_t


def reduce_rows(loss_rows, mask, divisor, reduction, row_shape, dtype):
    """The masked per-row losses reduced as asked, in ``dtype``."""
    loss_rows = masked_rows(loss_rows, mask)
    if reduction == "none":
        return loss_rows.view(row_shape).to(dtype)
    return (loss_rows.sum() / divisor.to(loss_rows.dtype)).to(dtype)


def fused_linear_kl_div_reference(
    student_input,
    student_weight,
    target,
    shift_labels=None,
    reduction="batchmean",
    ignore_index=-100,
    temperature=1.0,
    eps=1e-10,
):
    """The spec and the CPU fallback: student logits in the input's dtype (as an ``lm_head``
    computes them), their fp32 (fp64) log-softmax at the temperature, ``kl_div_elements`` against
    the target summed per row, masked and reduced as the module docstring says."""
    compute = compute_dtype(student_input, target)
    n_vocab = student_weight.shape[0]
    logits = F.linear(student_input, student_weight).reshape(-1, n_vocab).to(compute)
    log_q = torch.log_softmax(logits / temperature, -1)
    rows = kl_div_elements(log_q, target.reshape(-1, n_vocab).to(compute), False, eps).sum(-1)
    labels = None if shift_labels is None else shift_labels.reshape(-1)
    mask, count = valid_rows(labels, ignore_index, rows.shape[0], rows.device)
    divisor = reduction_divisor(reduction, count, n_vocab)
    out_dtype = torch.promote_types(student_input.dtype, target.dtype)
    return reduce_rows(rows, mask, divisor, reduction, student_input.shape[:-1], out_dtype)


def check_flkl_inputs(student_input, student_weight, target, shift_labels, reduction, temperature, accum_dtype):
    """The labels as [N] (or None) and the temperature, once every argument is valid."""
    check_head("student_input", student_input, "student_weight", student_weight)
    check_float("target", target)
    n_rows = student_input.numel() // student_input.shape[-1]
    expected = (*student_input.shape[:-1], student_weight.shape[0])
    if target.shape != expected:
        raise ValueError(
            f"`target` must hold the teacher's probabilities over the vocabulary, shape {expected}; "
            f"got {tuple(target.shape)}."
        )
    check_same_device(student_input=student_input, target=target)
    check_reduction(reduction)
    check_accum_dtype(accum_dtype)
    return check_labels(shift_labels, n_rows, {"student_input": student_input}), check_temperature(temperature)


class LigerFusedLinearKLDivFunction(RemembersGradMode):
    """``forward(student_input, student_weight, target, shift_labels=None, reduction="batchmean",
    ignore_index=-100, temperature=1.0, eps=1e-10, accum_dtype=None)``: the loss of the module
    docstring for ``student_input`` [..., H], ``student_weight`` [V, H] and ``target`` [..., V]
    probabilities. ``accum_dtype``: the dtype the weight gradient accumulates in (None: fp32)."""

    @staticmethod
    def forward(
        ctx,
        student_input,
        student_weight,
        target,
        shift_labels=None,
        reduction="batchmean",
        ignore_index=-100,
        temperature=1.0,
        eps=1e-10,
        accum_dtype=None,
    ):
        labels, temperature = check_flkl_inputs(
            student_input, student_weight, target, shift_labels, reduction, temperature, accum_dtype
        )
        needs = [caller_grad_mode.enabled and ctx.needs_input_grad[i] for i in range(3)]
        ctx.use_triton = use_triton(student_input) and compute_dtype(student_input, target) == torch.float32
        if not ctx.use_triton:
            args = (student_input, student_weight, target, shift_labels, reduction, ignore_index, temperature, eps)
            return reference_outputs(ctx, fused_linear_kl_div_reference, any(needs), *args)
        x, weight = as_flat_rows(student_input), student_weight.contiguous()
        target2 = as_rows(target.reshape(-1, weight.shape[0]))
        mask, count = valid_rows(labels, ignore_index, x.shape[0], x.device)
        divisor = reduction_divisor(reduction, count, weight.shape[0])
        row_factor = (torch.ones(x.shape[0], device=x.device) if mask is None else mask.to(torch.float32)) / divisor
        ctx.deferred = any(needs) and (reduction == "none" or needs[2])
        ctx.like = [(t.dtype, t.shape) for t in (student_input, student_weight, target)]
        options = (temperature, eps, accum_dtype)
        if ctx.deferred:  # per-row upstream gradients, or the target's gradient: computed in the backward
            loss_rows = fused_kl_chunks(x, weight, target2, row_factor, (False,) * 3, *options)[0]
            ctx.save_for_backward(x, weight, target2, row_factor)
            ctx.needs, ctx.options, ctx.per_row = needs, options, reduction == "none"
        else:
            loss_rows, grad_x, grad_w, _ = fused_kl_chunks(x, weight, target2, row_factor, needs, *options)
            ctx.grads = [grad_x, grad_w, None]
        out_dtype = torch.promote_types(student_input.dtype, target.dtype)
        return reduce_rows(loss_rows, mask, divisor, reduction, student_input.shape[:-1], out_dtype)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_output)[:3], 9)
        if not ctx.deferred:
            grads = ctx.grads
            del ctx.grads
            return one_grad_per_argument(scaled_grads(grads, ctx.like, grad_output), 9)
        x, weight, target2, row_factor = ctx.saved_tensors
        g = grad_output.reshape(-1 if ctx.per_row else 1).to(torch.float32)
        _, grad_x, grad_w, grad_t = fused_kl_chunks(x, weight, target2, row_factor * g, ctx.needs, *ctx.options)
        grads = [grad_x, grad_w, grad_t]
        return one_grad_per_argument(
            tuple(None if t is None else rounded(t, dtype, shape) for t, (dtype, shape) in zip(grads, ctx.like)), 9
        )


def fused_linear_kl_div_forward(
    student_input,
    student_weight,
    target,
    shift_labels,
    reduction,
    ignore_index,
    has_label,
    temperature,
    eps,
    accum_dtype=None,
):
    """The peer's low-level forward, no autograd: ``(loss, grad_input, grad_weight)``, the student's
    gradients for an upstream gradient of 1 (a scalar ``reduction``; for ``none``, of 1 per row),
    in its dtypes. ``has_label``: whether ``shift_labels`` is given. Scale them with
    ``fused_linear_kl_div_backward``."""
    check_has_label(has_label, shift_labels)
    return student_grads(
        LigerFusedLinearKLDivFunction, student_input, student_weight, target, shift_labels, reduction, ignore_index,
        temperature, eps, accum_dtype,
    )  # fmt: skip


def fused_linear_kl_div_backward(grad_output, grad_input, grad_weight):
    """The peer's low-level backward: the gradients of ``fused_linear_kl_div_forward`` times the
    scalar ``grad_output``, in place (nothing to do where it is exactly 1); returns them."""
    return scale_in_place(grad_output, grad_input, grad_weight)
