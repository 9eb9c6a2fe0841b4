"""Generalized Jensen-Shannon divergence of two distributions given as log-probabilities, the
distillation loss of GKD (Agarwal et al., 2024) as TRL's ``generalized_jsd_loss`` defines it.

Per row, with ``_input`` = log q (the student) and ``target`` = log p (the teacher) over ``V``
classes and ``m = beta p + (1 - beta) q``::

    JSD_beta = beta KL(p || m) + (1 - beta) KL(q || m)        for 0 < beta < 1
    beta = 0:  KL(p || q)   (forward KL)        beta = 1:  KL(q || p)   (reverse KL)

(the mixture form tends to 0 at both ends; the two KLs are what GKD and TRL use there). The loss
is the sum over rows divided by the number of rows that count ("batchmean" over tokens): all of
them, or those whose ``shift_labels`` is not ``ignore_index`` (the labels are only a mask: they are
not shifted here); no row counting gives 0 rather than NaN. Per element the gradients are
``(1 - beta) q (log q - log m)`` in log q and ``beta p (log p - log m)`` in log p (the inputs as free
variables, as autograd sees the formula); both arguments are differentiable. One pass forward,
one pass backward (both inputs re-read, no ``[N, V]`` buffer kept between), fp32 math; the loss
in ``_input``'s dtype, each gradient in its input's dtype.
"""

import math

import torch

from liger_kernel.ops.cross_entropy import (
    RemembersGradMode,
    caller_grad_mode,
    one_grad_per_argument,
)
from liger_kernel.ops.divergence import (
    Divergence,
    check_has_label,
    check_labels,
    check_pair,
    jsd_kind,
    masked_rows,
    reference_outputs,
    rows_grads,
    rows_launch,
    scale_in_place,
    valid_rows,
)
from liger_kernel.ops.kl_div import compute_dtype
from liger_kernel.ops.utils import as_rows, empty_output, fallback_backward
from liger_kernel.utils import use_triton

JSD_IMPLS = (None, "triton", "torch")


def jsd_elements(log_q, log_p, beta: float):
    """The per-element terms of the module docstring (inputs already upcast)."""
    if beta == 0:
        return torch.exp(log_p) * (log_p - log_q)
    if beta == 1:
        return torch.exp(log_q) * (log_q - log_p)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    return beta * torch.exp(log_p) * (log_p - log_m) + (1 - beta) * torch.exp(log_q) * (log_q - log_m)


def jsd_core(log_q, log_p, shift_labels, beta, ignore_index, out_dtype):
    """The reference's math on [N, V] log-probabilities of the compute dtype."""
    rows = jsd_elements(log_q, log_p, beta).sum(-1)
    labels = None if shift_labels is None else shift_labels.reshape(-1)
    mask, count = valid_rows(labels, ignore_index, rows.shape[0], rows.device)
    total = masked_rows(rows, mask).sum()
    return (total / torch.where(count > 0, count, 1.0).to(total.dtype)).to(out_dtype)


def jsd_reference(_input, target, shift_labels=None, beta=0.5, ignore_index=-100):
    """The spec and the CPU fallback: the module docstring's loss of ``_input`` (log q) and
    ``target`` (log p), [..., V], in fp32 (fp64 for fp64 inputs), cast once to ``_input``'s dtype."""
    compute = compute_dtype(_input, target)
    n_cols = _input.shape[-1]
    log_q, log_p = (t.reshape(-1, n_cols).to(compute) for t in (_input, target))
    return jsd_core(log_q, log_p, shift_labels, beta, ignore_index, _input.dtype)


def check_jsd_inputs(_input, target, shift_labels, beta, jsd_impl, jsd_mode):
    """The labels as [N] (or None) once every argument is valid; else an error naming it."""
    check_pair("input", _input, "target", target)
    if _input.dim() < 1:
        raise ValueError("`input` must have a class dimension: [BT, V] log-probabilities.")
    check_jsd_options("beta", beta, jsd_impl, jsd_mode)
    n_rows = _input.numel() // max(_input.shape[-1], 1)
    return check_labels(shift_labels, n_rows, {"input": _input})


def check_jsd_options(beta_name: str, beta, jsd_impl, jsd_mode) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"`{beta_name}` must be in [0, 1], got {beta}.")
    if jsd_impl not in JSD_IMPLS:
        raise ValueError(f"`jsd_impl` must be None, 'triton' or 'torch'; got {jsd_impl!r}.")
    if jsd_mode is not None:
        raise ValueError(f"`jsd_mode` must be None (the kernels have one, exact, mode); got {jsd_mode!r}.")


def runs_kernels(_input, target, impl) -> bool:
    return impl != "torch" and use_triton(_input) and compute_dtype(_input, target) == torch.float32


class LigerJSDFunction(RemembersGradMode):
    """``forward(_input, target, shift_labels=None, beta=0.5, ignore_index=-100, jsd_impl=None,
    jsd_mode=None)``: the generalized JSD of the module docstring of ``_input`` (student
    log-probabilities) and ``target`` (teacher log-probabilities), [..., V] each, masked by
    ``shift_labels`` [...] when given. ``jsd_impl``: None or "triton" (the kernels), "torch" (the
    reference); ``jsd_mode``: None (one mode: exact)."""

    @staticmethod
    def forward(ctx, _input, target, shift_labels=None, beta=0.5, ignore_index=-100, jsd_impl=None, jsd_mode=None):
        labels = check_jsd_inputs(_input, target, shift_labels, beta, jsd_impl, jsd_mode)
        need_grad = caller_grad_mode.enabled and any(ctx.needs_input_grad[:2])
        ctx.use_triton = runs_kernels(_input, target, jsd_impl)
        if not ctx.use_triton:
            args = (_input, target, shift_labels, beta, ignore_index)
            return reference_outputs(ctx, jsd_reference, need_grad, *args)
        divisor, rows = jsd_rows(_input, target, labels, beta, ignore_index)
        ctx.beta, ctx.ignore_index = beta, ignore_index
        if need_grad:
            ctx.save_for_backward(_input, target, labels)
        return (rows.sum() / divisor).to(_input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_output)[:2], 7)
        _input, target, labels = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        grads = jsd_grads(grad_output, _input, target, labels, ctx.beta, ctx.ignore_index, *needs)
        return one_grad_per_argument(grads, 7)


def jsd_rows(_input, target, labels, beta, ignore_index):
    """The kernels' forward: ``(divisor, rows)``, the fp32 count of rows that count (1 when none)
    and the [N] fp32 row sums (0 at ignored rows)."""
    x2, y2 = as_rows(_input), as_rows(target)
    rows = torch.empty(x2.shape[0], dtype=torch.float32, device=x2.device)
    rows_launch(x2, y2, Divergence(jsd_kind(beta), beta), labels, ignore_index, out=rows)
    return row_divisor(labels, ignore_index, x2.shape[0], x2.device), rows


def row_divisor(labels, ignore_index, n_rows, device):
    _, count = valid_rows(labels, ignore_index, n_rows, device)
    return torch.where(count > 0, count, 1.0)


def jsd_grads(grad_output, _input, target, labels, beta, ignore_index, need_input, need_target):
    """The kernels' backward: the gradients in ``_input`` and ``target`` (None where not needed),
    in their shapes and dtypes, for the upstream ``grad_output`` (one pass over both)."""
    x2, y2 = as_rows(_input), as_rows(target)
    g = (grad_output.to(torch.float32) / row_divisor(labels, ignore_index, x2.shape[0], x2.device)).reshape(1)
    div = Divergence(jsd_kind(beta), beta)
    return rows_grads(x2, y2, div, g, need_input, need_target, _input.shape, labels, ignore_index)


def jsd_forward(_input, target, shift_labels, beta, ignore_index, has_label, jsd_impl=None, jsd_mode=None):
    """The peer's low-level forward, no autograd: ``(loss, dX)``, ``dX`` the gradient in ``_input``
    for an upstream gradient of 1 (one launch: loss and gradient in the same pass). ``has_label``
    says whether ``shift_labels`` is given. Apply the upstream gradient with ``jsd_backward``."""
    check_has_label(has_label, shift_labels)
    labels = check_jsd_inputs(_input, target, shift_labels, beta, jsd_impl, jsd_mode)
    with torch.no_grad():
        if not runs_kernels(_input, target, jsd_impl):
            x = _input.detach().requires_grad_()
            with torch.enable_grad():
                loss = jsd_reference(x, target, shift_labels, beta, ignore_index)
                (dx,) = torch.autograd.grad(loss, x)
            return loss.detach(), dx
        x2, y2 = as_rows(_input), as_rows(target)
        divisor = row_divisor(labels, ignore_index, x2.shape[0], x2.device)
        rows = torch.empty(x2.shape[0], dtype=torch.float32, device=x2.device)
        dx = empty_output(x2.shape, x2)
        g = (1.0 / divisor).reshape(1)
        rows_launch(x2, y2, Divergence(jsd_kind(beta), beta), labels, ignore_index, out=rows, g=g, gx=dx)
        return (rows.sum() / divisor).to(_input.dtype), dx.view(_input.shape)


def jsd_backward(dX, grad_output):
    """The peer's low-level backward: ``dX`` from ``jsd_forward`` times the scalar ``grad_output``,
    in place (no work, and no sync, where it is exactly 1); returns ``dX``."""
    return scale_in_place(grad_output, dX)[0]
