"""Total variation distance ``TVD(p, q) = sum_v |p_v - q_v| / 2`` of two distributions given as
probabilities, [..., V] each, rows masked by ``shift_labels`` (rows whose label is
``ignore_index`` count as 0 and are not counted; the labels are only a mask).

Reductions: ``none`` (per element, [..., V], 0 at ignored rows), ``sum``, ``mean`` (over the
elements of the rows that count) and ``batchmean`` (over the rows that count); nothing counting
gives 0 rather than NaN. Gradients ``sign(p - q) / 2`` and its negative (0 where they are equal,
as PyTorch's ``abs``), both arguments differentiable. One pass forward, one backward; fp32 math,
the loss in ``promote_types`` of the inputs' dtypes, each gradient in its input's dtype.
"""

import torch

from liger_kernel.ops.cross_entropy import RemembersGradMode, caller_grad_mode, one_grad_per_argument
from liger_kernel.ops.divergence import (
    TVD,
    Divergence,
    check_labels,
    check_pair,
    check_reduction,
    masked_rows,
    reduction_divisor,
    reference_outputs,
    rows_grads,
    rows_loss,
    scaled_upstream,
    valid_rows,
)
from liger_kernel.ops.kl_div import compute_dtype, runs_kernels
from liger_kernel.ops.utils import as_rows, fallback_backward


def tvd_reference(p, q, shift_labels=None, reduction="batchmean", ignore_index=-100):
    """The spec and the CPU fallback: the module docstring's loss in fp32 (fp64 for fp64 inputs),
    cast once to ``promote_types`` of the inputs' dtypes."""
    compute = compute_dtype(p, q)
    n_cols = p.shape[-1]
    elements = 0.5 * (p.reshape(-1, n_cols).to(compute) - q.reshape(-1, n_cols).to(compute)).abs()
    labels = None if shift_labels is None else shift_labels.reshape(-1)
    mask, count = valid_rows(labels, ignore_index, elements.shape[0], elements.device)
    elements = masked_rows(elements, mask)
    out_dtype = torch.promote_types(p.dtype, q.dtype)
    if reduction == "none":
        return elements.view(p.shape).to(out_dtype)
    return (elements.sum() / reduction_divisor(reduction, count, n_cols).to(compute)).to(out_dtype)


def _tvd_rows(p, q, labels, reduction, ignore_index):
    """``(x2, y2, divisor)`` of the kernels; ``labels`` flat [R] or None."""
    x2, y2 = as_rows(p), as_rows(q)
    _, count = valid_rows(labels, ignore_index, x2.shape[0], x2.device)
    return x2, y2, reduction_divisor(reduction, count, x2.shape[1])


def tvd_kernel_forward(p, q, labels, reduction, ignore_index):
    """The loss through the kernels (the Function's forward, and the compiled op's)."""
    x2, y2, divisor = _tvd_rows(p, q, labels, reduction, ignore_index)
    out_dtype = torch.promote_types(p.dtype, q.dtype)
    return rows_loss(x2, y2, Divergence(TVD.value), reduction, divisor, out_dtype, p.shape, labels, ignore_index)


def tvd_kernel_backward(grad_output, p, q, labels, reduction, ignore_index, need_p, need_q):
    """``(grad p, grad q)`` through the kernels, None where not needed."""
    x2, y2, divisor = _tvd_rows(p, q, labels, reduction, ignore_index)
    g = scaled_upstream(grad_output, x2, reduction, divisor)
    return rows_grads(x2, y2, Divergence(TVD.value), g, need_p, need_q, p.shape, labels, ignore_index)


def check_tvd_inputs(p, q, shift_labels, reduction):
    """The labels flattened to [R] (or None) once every argument is valid."""
    check_pair("p", p, "q", q)
    check_reduction(reduction)
    if p.dim() < 1:
        raise ValueError("`p` must have a class dimension: [BT, V] probabilities.")
    return check_labels(shift_labels, p.numel() // max(p.shape[-1], 1), {"p": p})


class LigerTVDLossFunction(RemembersGradMode):
    """``forward(p, q, shift_labels=None, reduction="batchmean", ignore_index=-100)``: the total
    variation distance of the module docstring."""

    @staticmethod
    def forward(ctx, p, q, shift_labels=None, reduction="batchmean", ignore_index=-100):
        labels = check_tvd_inputs(p, q, shift_labels, reduction)
        need_grad = caller_grad_mode.enabled and any(ctx.needs_input_grad[:2])
        ctx.use_triton = runs_kernels(p, q)
        if not ctx.use_triton:
            return reference_outputs(ctx, tvd_reference, need_grad, p, q, shift_labels, reduction, ignore_index)
        ctx.options = (reduction, ignore_index)
        if need_grad:
            ctx.save_for_backward(p, q, labels)
        return tvd_kernel_forward(p, q, labels, reduction, ignore_index)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_output)[:2], 5)
        grads = tvd_kernel_backward(grad_output, *ctx.saved_tensors, *ctx.options, *ctx.needs_input_grad[:2])
        return one_grad_per_argument(grads, 5)
