"""Cross-entropy and total variation distance of a student's logits in one pass: the hard-label
loss and the distance to a teacher's distribution, from the same read of the logits.

For logits ``student_logits`` and ``teacher_logits`` [..., V] and labels ``target`` [...], with
``p = softmax(student_logits)``, ``q = softmax(teacher_logits)``, over the tokens whose label is
not ``ignore_index`` (``n`` of them; nothing counting gives 0 rather than NaN)::

    ce  = sum_tokens (lse(student) - student[y]) / n        (F.cross_entropy, mean)
    tvd = sum_tokens sum_v |p_v - q_v| / 2 / n

returned as ``(ce, tvd)``, both differentiable, in ``promote_types`` of the logits' dtypes (fp32
math, cast once). With ``s = sign(p - q)`` (0 where equal) and per token
``sigma_p = sum_v s_v p_v``, ``sigma_q = sum_v s_v q_v``::

    d/d student = g_ce (p - onehot(y)) / n + g_tvd p (s - sigma_p) / (2 n)
    d/d teacher = -g_tvd q (s - sigma_q) / (2 n)

The forward reads both logit rows twice (log-sum-exps, then the losses and sigmas) and keeps
``[N]`` statistics; the backward reads them once more and writes the gradients into new buffers
(the logits are left intact). Labels outside ``[0, V)`` other than ``ignore_index`` are an error
(checked on the host: one sync).
"""

import torch
import triton
import triton.language as tl

from liger_kernel.ops.cross_entropy import (
    RemembersGradMode,
    caller_grad_mode,
    check_labels_host,
    check_target,
    one_grad_per_argument,
)
from liger_kernel.ops.divergence import (
    check_pair,
    logits_rows_launch,
    masked_rows,
    reference_outputs,
    row_logsumexp,
    valid_rows,
)
from liger_kernel.ops.kl_div import compute_dtype
from liger_kernel.ops.utils import as_rows, empty_output, fallback_backward
from liger_kernel.utils import use_triton


@triton.jit
def _probs_and_sign(zs_row, zt_row, cols, mask, lse_s, lse_t):
    """A block's ``p``, ``q`` (0 on masked lanes) and ``sign(p - q)`` (0 where equal)."""
    p = tl.exp(tl.load(zs_row + cols, mask=mask, other=float("-inf")).to(tl.float32) - lse_s)
    q = tl.exp(tl.load(zt_row + cols, mask=mask, other=float("-inf")).to(tl.float32) - lse_t)
    return p, q, tl.where(p > q, 1.0, tl.where(p < q, -1.0, 0.0))


@triton.jit
def _ce_tvd_rows_kernel(
    zs_ptr,  # [R, V] student logits, unit column stride
    stride_s,
    zt_ptr,  # [R, V] teacher logits
    stride_t,
    y_ptr,  # [R] labels
    stats_ptr,  # [6, R] fp32: ce, tvd, lse_s, lse_t, sigma_p, sigma_q (written by FORWARD, read otherwise)
    n_rows,
    g_ptr,  # [2] fp32: upstream gradients of ce and tvd, already over n (not FORWARD)
    dzs_ptr,  # [R, V] out: d/d student logits (GRAD_S)
    stride_dzs,
    dzt_ptr,  # [R, V] out: d/d teacher logits (GRAD_T)
    stride_dzt,
    n_cols,
    ignore_index,
    FORWARD: tl.constexpr,
    GRAD_S: tl.constexpr,
    GRAD_T: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One row per program: the forward (two passes) or the gradients (one pass)."""
    row = tl.program_id(0).to(tl.int64)
    zs_row = zs_ptr + row * stride_s
    zt_row = zt_ptr + row * stride_t
    offs = tl.arange(0, BLOCK)
    y = tl.load(y_ptr + row)
    keep = y != ignore_index
    y = tl.where(keep, y, 0)
    if FORWARD:
        lse_s = row_logsumexp(zs_row, n_cols, 1.0, BLOCK)
        lse_t = row_logsumexp(zt_row, n_cols, 1.0, BLOCK)
        tvd = tl.zeros([BLOCK], tl.float32)
        sigma_p = tl.zeros([BLOCK], tl.float32)
        sigma_q = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            p, q, s = _probs_and_sign(zs_row, zt_row, cols, cols < n_cols, lse_s, lse_t)
            tvd += 0.5 * tl.abs(p - q)
            sigma_p += s * p
            sigma_q += s * q
        ce = lse_s - tl.load(zs_row + y).to(tl.float32)
        tl.store(stats_ptr + row, tl.where(keep, ce, 0.0))
        tl.store(stats_ptr + n_rows + row, tl.where(keep, tl.sum(tvd, 0), 0.0))
        tl.store(stats_ptr + 2 * n_rows + row, lse_s)
        tl.store(stats_ptr + 3 * n_rows + row, lse_t)
        tl.store(stats_ptr + 4 * n_rows + row, tl.sum(sigma_p, 0))
        tl.store(stats_ptr + 5 * n_rows + row, tl.sum(sigma_q, 0))
    else:
        lse_s = tl.load(stats_ptr + 2 * n_rows + row)
        lse_t = tl.load(stats_ptr + 3 * n_rows + row)
        sigma_p = tl.load(stats_ptr + 4 * n_rows + row)
        sigma_q = tl.load(stats_ptr + 5 * n_rows + row)
        g_ce = tl.where(keep, tl.load(g_ptr), 0.0)
        g_tvd = tl.where(keep, 0.5 * tl.load(g_ptr + 1), 0.0)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            mask = cols < n_cols
            p, q, s = _probs_and_sign(zs_row, zt_row, cols, mask, lse_s, lse_t)
            if GRAD_S:
                grad = g_ce * (p - tl.where(cols == y, 1.0, 0.0)) + g_tvd * p * (s - sigma_p)
                tl.store(dzs_ptr + row * stride_dzs + cols, grad.to(dzs_ptr.dtype.element_ty), mask=mask)
            if GRAD_T:
                grad = -g_tvd * q * (s - sigma_q)
                tl.store(dzt_ptr + row * stride_dzt + cols, grad.to(dzt_ptr.dtype.element_ty), mask=mask)


def check_ce_tvd_arguments(student_logits, teacher_logits, target, ignore_index) -> None:
    """Every argument but the labels' values (no sync: what a compiled caller checks)."""
    check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    if student_logits.dim() < 1:
        raise ValueError("`student_logits` must have a class dimension: [BT, V].")
    if not isinstance(ignore_index, int):
        raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}.")
    n_cols = student_logits.shape[-1]
    check_target(target, student_logits.numel() // max(n_cols, 1), None, n_cols, {"student_logits": student_logits})


def check_ce_tvd_inputs(student_logits, teacher_logits, target, ignore_index):
    """The labels as [N] once every argument is valid (a host check of their range: one sync)."""
    check_ce_tvd_arguments(student_logits, teacher_logits, target, ignore_index)
    labels = target.reshape(-1)
    check_labels_host(labels, ignore_index, student_logits.shape[-1])
    return labels.contiguous()


def fused_ce_tvd_reference(student_logits, teacher_logits, target, ignore_index=-100):
    """The spec and the CPU fallback: the module docstring's ``(ce, tvd)`` with PyTorch ops in fp32
    (fp64 for fp64 logits), cast once."""
    compute = compute_dtype(student_logits, teacher_logits)
    n_cols = student_logits.shape[-1]
    zs, zt = (t.reshape(-1, n_cols).to(compute) for t in (student_logits, teacher_logits))
    labels = target.reshape(-1)
    check_labels_host(labels, ignore_index, n_cols)
    mask, count = valid_rows(labels, ignore_index, zs.shape[0], zs.device)
    divisor = torch.where(count > 0, count, 1.0).to(compute)
    log_p = torch.log_softmax(zs, -1)
    ce_rows = -log_p.gather(-1, torch.where(mask, labels, 0)[:, None]).squeeze(-1)
    tvd_rows = 0.5 * (log_p.exp() - torch.softmax(zt, -1)).abs().sum(-1)
    out_dtype = torch.promote_types(student_logits.dtype, teacher_logits.dtype)
    return tuple((masked_rows(rows, mask).sum() / divisor).to(out_dtype) for rows in (ce_rows, tvd_rows))


def ce_tvd_launch(zs, zt, labels, stats, ignore_index, forward=True, g=None, dzs=None, dzt=None) -> None:
    n_rows, n_cols = zs.shape
    logits_rows_launch(
        _ce_tvd_rows_kernel, n_rows, n_cols,
        zs, zs.stride(0), zt, zt.stride(0), labels, stats, n_rows, stats if g is None else g,
        zs if dzs is None else dzs, 0 if dzs is None else dzs.stride(0),
        zt if dzt is None else dzt, 0 if dzt is None else dzt.stride(0),
        n_cols, ignore_index,
        FORWARD=forward, GRAD_S=dzs is not None, GRAD_T=dzt is not None,
    )  # fmt: skip


def token_count(labels, ignore_index):
    """The number of tokens that count, as an fp32 device tensor, 1 where it would be 0."""
    count = (labels != ignore_index).sum(dtype=torch.float32)
    return torch.where(count > 0, count, 1.0)


def fused_ce_tvd_forward(student_logits, teacher_logits, target, ignore_index):
    """The peer's low-level forward, no autograd: ``(ce, tvd, student_lse, teacher_lse, sigma)``,
    the per-token statistics fp32 [N] (``sigma`` [2, N]: ``sigma_p``, ``sigma_q``) for
    ``fused_ce_tvd_backward``."""
    labels = check_ce_tvd_inputs(student_logits, teacher_logits, target, ignore_index)
    ce, tvd, stats = ce_tvd_kernel_forward(student_logits, teacher_logits, labels, ignore_index)
    return ce, tvd, stats[2], stats[3], stats[4:]


def ce_tvd_kernel_forward(student_logits, teacher_logits, labels, ignore_index):
    """``(ce, tvd, stats)`` through the kernel, ``stats`` the ``[6, N]`` fp32 per-token values the
    backward reads; ``labels`` [N], checked."""
    zs, zt = as_rows(student_logits), as_rows(teacher_logits)
    stats = torch.empty(6, zs.shape[0], dtype=torch.float32, device=zs.device)
    ce_tvd_launch(zs, zt, labels, stats, ignore_index)
    sums = stats[:2].sum(1) / token_count(labels, ignore_index)
    out_dtype = torch.promote_types(student_logits.dtype, teacher_logits.dtype)
    return sums[0].to(out_dtype), sums[1].to(out_dtype), stats


def fused_ce_tvd_backward(
    grad_ce, grad_tvd, student_logits, teacher_logits, target, student_lse, teacher_lse, sigma, ignore_index
):
    """The peer's low-level backward: the gradient in ``student_logits`` (a new tensor of its shape
    and dtype) of ``grad_ce * ce + grad_tvd * tvd``, from ``fused_ce_tvd_forward``'s statistics."""
    labels = target.reshape(-1).contiguous()
    zs, zt = as_rows(student_logits), as_rows(teacher_logits)
    stats = torch.empty(6, zs.shape[0], dtype=torch.float32, device=zs.device)
    stats[2], stats[3], stats[4:] = student_lse, teacher_lse, sigma
    grad = empty_output(zs.shape, zs)
    ce_tvd_launch(zs, zt, labels, stats, ignore_index, False, upstream(grad_ce, grad_tvd, labels, ignore_index), grad)
    return grad.view(student_logits.shape)


def upstream(grad_ce, grad_tvd, labels, ignore_index):
    """The kernel's ``[2]`` fp32 upstream gradients over the token count."""
    g = torch.stack([torch.as_tensor(grad, device=labels.device).reshape(()) for grad in (grad_ce, grad_tvd)])
    return g.to(torch.float32) / token_count(labels, ignore_index)


class LigerFusedCETVDFunction(RemembersGradMode):
    """``forward(student_logits, teacher_logits, target, ignore_index=-100)`` -> ``(ce, tvd)``, the
    losses of the module docstring; both logits differentiable."""

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, target, ignore_index=-100):
        labels = check_ce_tvd_inputs(student_logits, teacher_logits, target, ignore_index)
        need_grad = caller_grad_mode.enabled and any(ctx.needs_input_grad[:2])
        ctx.use_triton = use_triton(student_logits) and compute_dtype(student_logits, teacher_logits) == torch.float32
        if not ctx.use_triton:
            args = (student_logits, teacher_logits, target, ignore_index)
            return reference_outputs(ctx, fused_ce_tvd_reference, need_grad, *args)
        zs, zt = as_rows(student_logits), as_rows(teacher_logits)
        ce, tvd, stats = ce_tvd_kernel_forward(zs, zt, labels, ignore_index)
        if need_grad:
            ctx.save_for_backward(zs, zt, labels, stats)
        ctx.ignore_index, ctx.shape = ignore_index, student_logits.shape
        return ce, tvd

    @staticmethod
    def backward(ctx, grad_ce, grad_tvd):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_ce, grad_tvd)[:2], 4)
        zs, zt, labels, stats = ctx.saved_tensors
        grads = ce_tvd_kernel_backward(
            grad_ce, grad_tvd, zs, zt, labels, stats, ctx.ignore_index, *ctx.needs_input_grad[:2], ctx.shape
        )
        return one_grad_per_argument(grads, 4)


def ce_tvd_kernel_backward(grad_ce, grad_tvd, zs, zt, labels, stats, ignore_index, need_s, need_t, shape):
    """``(grad student_logits, grad teacher_logits)`` in ``shape`` through the kernel from the
    forward's ``[6, N]`` statistics, None where not needed; ``zs``, ``zt`` [N, V] rows, ``labels`` [N]."""
    dzs = empty_output(zs.shape, zs) if need_s else None
    dzt = empty_output(zt.shape, zt) if need_t else None
    g = upstream(grad_ce, grad_tvd, labels, ignore_index)
    ce_tvd_launch(zs, zt, labels, stats, ignore_index, False, g, dzs, dzt)
    return tuple(None if t is None else t.view(shape) for t in (dzs, dzt))
