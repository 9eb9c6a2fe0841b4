"""KL divergence: ``F.kl_div(y_pred, y_true, reduction, log_target)`` in one pass forward and one
backward, fp32 math whatever the inputs' dtypes.

Per element, ``y_pred`` = log q and ``y_true`` = p (``log_target=False``) or log p (True)::

    log_target=False:  p (log max(p, eps) - log q)      (PyTorch: xlogy(p, p) - p log q)
    log_target=True:   e^(log p) (log p - log q)

The two agree with PyTorch everywhere except targets in (0, eps), where ``eps`` (default 1e-10)
bounds the log: the terms differ there by less than ``eps |log eps|`` = 2.3e-9 each. Reductions as
PyTorch: ``none`` (per element), ``sum``, ``mean`` (over all elements), ``batchmean`` (over
``y_pred.shape[0]``); an empty input gives 0 rather than NaN. Both arguments are differentiable
(``y_true`` too, as in PyTorch). The loss comes back in ``torch.promote_types`` of the inputs'
dtypes (what ``F.kl_div`` returns), computed in fp32 and cast once; each gradient in its input's
dtype. The backward reads both inputs again rather than keeping an ``[N, V]`` gradient from the
forward: the same 5 passes over memory, nothing held between the two.
"""

import torch

from liger_kernel.ops.cross_entropy import RemembersGradMode, caller_grad_mode, one_grad_per_argument
from liger_kernel.ops.divergence import (
    KL_LOG,
    KL_PROB,
    Divergence,
    check_pair,
    check_reduction,
    reference_outputs,
    rows_grads,
    rows_loss,
    scaled_upstream,
)
from liger_kernel.ops.utils import as_rows, fallback_backward
from liger_kernel.utils import use_triton


def compute_dtype(*tensors) -> torch.dtype:
    """fp64 when any input is fp64, else fp32: the precision of the references' math."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def kl_div_elements(y_pred, y_true, log_target: bool, eps: float):
    """The per-element terms of the module docstring, in the inputs' dtype (upcast them first)."""
    if log_target:
        return torch.exp(y_true) * (y_true - y_pred)
    return y_true * (torch.log(torch.clamp(y_true, min=eps)) - y_pred)


def runs_kernels(a, b) -> bool:
    """Whether a divergence of ``a`` and ``b`` runs the kernels: fp32 math (no fp64 input) where Triton runs."""
    return use_triton(a) and compute_dtype(a, b) == torch.float32


def reduce_elements(loss, reduction: str, batch: int):
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / max(loss.numel() if reduction == "mean" else batch, 1)


def kl_div_reference(y_pred, y_true, reduction="batchmean", log_target=False, eps=1e-10):
    """The spec and the CPU fallback: the module docstring's formula in fp32 (fp64 for fp64
    inputs), reduced as asked, cast once to ``promote_types`` of the inputs' dtypes."""
    compute = compute_dtype(y_pred, y_true)
    loss = kl_div_elements(y_pred.to(compute), y_true.to(compute), log_target, eps)
    batch = y_pred.shape[0] if y_pred.dim() else 1
    return reduce_elements(loss, reduction, batch).to(torch.promote_types(y_pred.dtype, y_true.dtype))


def _kl_rows(y_pred, y_true, reduction, log_target, eps):
    """``(x2, y2, divergence, divisor)`` of the kernels for inputs of any shape (0-dim too); the
    divisor 1 for ``sum`` and ``none``."""
    x2, y2 = (as_rows(t.reshape(1, 1) if t.dim() == 0 else t) for t in (y_pred, y_true))
    div = Divergence(KL_LOG.value if log_target else KL_PROB.value, eps=eps)
    batch = y_pred.shape[0] if y_pred.dim() else 1
    divisor = 1.0 if reduction in ("sum", "none") else float(max(y_pred.numel() if reduction == "mean" else batch, 1))
    return x2, y2, div, divisor


def kl_div_kernel_forward(y_pred, y_true, reduction, log_target, eps):
    """The loss through the kernels (the Function's forward, and the compiled op's)."""
    x2, y2, div, divisor = _kl_rows(y_pred, y_true, reduction, log_target, eps)
    out_dtype = torch.promote_types(y_pred.dtype, y_true.dtype)
    return rows_loss(x2, y2, div, reduction, divisor, out_dtype, y_pred.shape)


def kl_div_kernel_backward(grad_output, y_pred, y_true, reduction, log_target, eps, need_pred, need_true):
    """``(grad y_pred, grad y_true)`` through the kernels, None where not needed."""
    x2, y2, div, divisor = _kl_rows(y_pred, y_true, reduction, log_target, eps)
    g = scaled_upstream(grad_output, x2, reduction, divisor)
    return rows_grads(x2, y2, div, g, need_pred, need_true, y_pred.shape)


class LigerKLDivLossFunction(RemembersGradMode):
    """``forward(y_pred, y_true, reduction="batchmean", log_target=False, eps=1e-10)``: the KL
    divergence of the module docstring (``F.kl_div(y_pred, y_true, reduction=reduction,
    log_target=log_target)``); ``y_pred`` and ``y_true`` of one shape."""

    @staticmethod
    def forward(ctx, y_pred, y_true, reduction="batchmean", log_target=False, eps=1e-10):
        check_pair("y_pred", y_pred, "y_true", y_true)
        check_reduction(reduction)
        need_grad = caller_grad_mode.enabled and any(ctx.needs_input_grad[:2])
        ctx.use_triton = runs_kernels(y_pred, y_true)
        if not ctx.use_triton:
            return reference_outputs(ctx, kl_div_reference, need_grad, y_pred, y_true, reduction, log_target, eps)
        ctx.options = (reduction, log_target, eps)
        if need_grad:
            ctx.save_for_backward(y_pred, y_true)
        return kl_div_kernel_forward(y_pred, y_true, *ctx.options)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_output)[:2], 5)
        grads = kl_div_kernel_backward(grad_output, *ctx.saved_tensors, *ctx.options, *ctx.needs_input_grad[:2])
        return one_grad_per_argument(grads, 5)
