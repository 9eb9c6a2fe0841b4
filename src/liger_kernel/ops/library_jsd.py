"""The JSD family as ``torch.library`` custom ops, as ``ops/library.py`` registers the first ones (see
there: fake implementations, autograd formulas, twins that ``apply_of`` routes to while Dynamo
traces, the eager path untouched): the generalized JSD of log-probabilities (``ops/jsd.py``), the
fused linear JSD (``ops/fused_linear_jsd.py``) and the chunked distillation JSD loss
(``chunked_loss/jsd_loss.py``, whose row op is ``ops/jsd_distillation_rows.py``).

``jsd`` has a forward op (the loss) and a backward op (one pass over both inputs). The two fused
losses compute their gradients in the forward, as their Functions do: the op runs the Function
with autograd for an upstream gradient of 1 and returns the loss and the gradients it needs; the
backward scales them by the upstream gradient (a second rounding in half precision unless it is 1,
as for the fused linear cross-entropy). The fused losses' host code (chunk loops, syncs) stays
inside the opaque ops: no graph break.
"""

import torch
from torch import Tensor

from liger_kernel.chunked_loss.fused_linear_distillation import check_distillation_inputs
from liger_kernel.chunked_loss.jsd_loss import LigerFusedLinearJSDFunction as ChunkedJSDFunction
from liger_kernel.ops.fused_linear_jsd import LigerFusedLinearJSDFunction, check_fljsd_inputs
from liger_kernel.ops.jsd import check_jsd_inputs, jsd_grads, jsd_reference, jsd_rows, runs_kernels
from liger_kernel.ops.library import _TWINS, ENABLED, _autograd_enabled, _custom_op, _empty, _or_zeros, _reference_grads

# ----------------------------------------------------------------------------- shared


def _empty_or_like(t, need):
    return t.new_empty(t.shape) if need else _empty(t)


def register_pair_autograd(op, backward_op, n_tensors: int) -> None:
    """Registers the autograd formula of a loss op whose first two arguments (of ``n_tensors``
    tensors, then options) are differentiable and whose backward op takes ``(grad, *tensors,
    *options, need_first, need_second)`` and returns their gradients."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.options = inputs[n_tensors:]

    def backward(ctx, grad):
        needs = ctx.needs_input_grad[:2]
        grads = backward_op(grad, *ctx.saved_tensors, *ctx.options, *needs)
        return *(g if need else None for g, need in zip(grads, needs)), *[None] * (len(ctx.needs_input_grad) - 2)

    op.register_autograd(backward, setup_context=setup)


def pair_grads_fake(grad, first, second, *rest):
    """The fake of such a backward op: each gradient like its input, or empty unless asked."""
    return _empty_or_like(first, rest[-2]), _empty_or_like(second, rest[-1])


def needed_grads(grads, tensors, needs):
    """A backward op's outputs: each gradient contiguous (zeros if the reference gave none), or
    empty unless asked."""
    return tuple(_or_zeros(g, t).contiguous() if need else _empty(t) for g, t, need in zip(grads, tensors, needs))


# ----------------------------------------------------------------------------- JSD of log-probabilities


@_custom_op("jsd")
def jsd(input: Tensor, target: Tensor, shift_labels: Tensor | None, beta: float, ignore_index: int) -> Tensor:
    """The loss (0-dim, in ``input``'s dtype)."""
    if not runs_kernels(input, target, None):
        return jsd_reference(input, target, shift_labels, beta, ignore_index)
    labels = None if shift_labels is None else shift_labels.reshape(-1)
    divisor, rows = jsd_rows(input, target, labels, beta, ignore_index)
    return (rows.sum() / divisor).to(input.dtype)


@jsd.register_fake
def _(input, target, shift_labels, beta, ignore_index):
    return input.new_empty(())


@_custom_op("jsd_backward")
def jsd_backward(
    grad: Tensor, input: Tensor, target: Tensor, shift_labels: Tensor | None, beta: float, ignore_index: int,
    need_input: bool, need_target: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The gradients in ``input`` and ``target`` (each empty unless asked)."""
    if not runs_kernels(input, target, None):

        def reference(x, y):
            return jsd_reference(x, y, shift_labels, beta, ignore_index)

        gx, gy = _reference_grads(reference, (input, target), (grad,))
    else:
        labels = None if shift_labels is None else shift_labels.reshape(-1)
        gx, gy = jsd_grads(grad, input, target, labels, beta, ignore_index, need_input, need_target)
    return needed_grads((gx, gy), (input, target), (need_input, need_target))


jsd_backward.register_fake(pair_grads_fake)


register_pair_autograd(jsd, jsd_backward, 3)


def _jsd_twin(_input, target, shift_labels=None, beta=0.5, ignore_index=-100, jsd_impl=None, jsd_mode=None):
    """``LigerJSDFunction.apply`` under compile (``jsd_impl="torch"``: ``LIGER_KERNEL_IMPL=torch``)."""
    check_jsd_inputs(_input, target, shift_labels, beta, jsd_impl, jsd_mode)
    return jsd(_input, target, shift_labels, float(beta), int(ignore_index))


# ----------------------------------------------------------------------------- the fused losses


def _loss_and_grads(apply, tensors, options, needs, grad_outputs=()):
    """``apply(*tensors, *options)`` with autograd: its outputs (detached) and the gradients of
    its outputs for ``grad_outputs`` (default: 1 for the first; None skips one) in each tensor
    marked in ``needs`` (an empty tensor elsewhere)."""
    with _autograd_enabled():
        leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(tensors, needs)]
        outputs = apply(*leaves, *options)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [
            (o, g)
            for o, g in zip(outputs, grad_outputs or (torch.ones_like(outputs[0]),))
            if g is not None and o is not None and o.requires_grad
        ]
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        found = iter(
            torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
            if wanted and pairs
            else [None] * len(wanted)
        )
    grads = [_or_zeros(next(found), t) if t is not None and t.requires_grad else _empty(tensors[0]) for t in leaves]
    return [None if o is None else o.detach() for o in outputs], grads


def _scaled_setup(n_outputs):
    """``setup_context`` of an op whose outputs are ``n_outputs`` values (the first the loss), then
    gradients for an upstream gradient of 1."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*output[n_outputs:])
        ctx.mark_non_differentiable(*output[1:])

    return setup


def _scaled_backward(positions, n_args):
    """The op's backward: each saved gradient times the upstream gradient of the loss, at its
    argument's position in ``positions``; None for the other ``n_args``."""

    def backward(ctx, grad_loss, *_):
        grads = [None] * n_args
        for i, grad in zip(positions, ctx.saved_tensors):
            grads[i] = grad * grad_loss if ctx.needs_input_grad[i] and grad.numel() else None
        return tuple(grads)

    return backward


@_custom_op("fused_linear_jsd")
def fused_linear_jsd(
    student_input: Tensor, student_weight: Tensor, teacher_input: Tensor, teacher_weight: Tensor,
    shift_labels: Tensor | None, jsd_beta: float, ignore_index: int, temperature: float,
    accum_dtype: torch.dtype | None, jsd_impl: str | None, need_student_input: bool, need_student_weight: bool,
    need_teacher_input: bool, need_teacher_weight: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(loss, grad_student_input, grad_student_weight, grad_teacher_input, grad_teacher_weight)``,
    the gradients for an upstream gradient of 1, each empty unless asked."""
    tensors = (student_input, student_weight, teacher_input, teacher_weight, shift_labels)
    needs = (need_student_input, need_student_weight, need_teacher_input, need_teacher_weight, False)
    options = (jsd_beta, ignore_index, temperature, accum_dtype, jsd_impl)
    (loss,), grads = _loss_and_grads(LigerFusedLinearJSDFunction.apply, tensors, options, needs)
    return loss, *grads[:4]


@fused_linear_jsd.register_fake
def _(student_input, student_weight, teacher_input, teacher_weight, shift_labels, jsd_beta, ignore_index, temperature,
      accum_dtype, jsd_impl, *needs):  # fmt: skip
    tensors = (student_input, student_weight, teacher_input, teacher_weight)
    return student_input.new_empty(()), *(_empty_or_like(t, need) for t, need in zip(tensors, needs))


fused_linear_jsd.register_autograd(_scaled_backward((0, 1, 2, 3), 14), setup_context=_scaled_setup(1))


def _fused_linear_jsd_twin(
    student_input, student_weight, teacher_input, teacher_weight, shift_labels=None, jsd_beta=0.5, ignore_index=-100,
    temperature=1.0, accum_dtype=None, jsd_impl=None, jsd_mode=None,
):  # fmt: skip
    """``LigerFusedLinearJSDFunction.apply`` (ops) under compile."""
    _, temperature = check_fljsd_inputs(
        student_input, student_weight, teacher_input, teacher_weight, shift_labels, jsd_beta, temperature,
        accum_dtype, jsd_impl, jsd_mode,
    )  # fmt: skip
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and t.requires_grad for t in (student_input, student_weight, teacher_input, teacher_weight)]
    return fused_linear_jsd(
        student_input, student_weight, teacher_input, teacher_weight, shift_labels, float(jsd_beta),
        int(ignore_index), temperature, accum_dtype, jsd_impl, *needs,
    )[0]  # fmt: skip


@_custom_op("fused_linear_jsd_distillation")
def fused_linear_jsd_distillation(
    student_input: Tensor, student_weight: Tensor, teacher_input: Tensor, teacher_weight: Tensor, target: Tensor,
    student_bias: Tensor | None, teacher_bias: Tensor | None, weight_hard_loss: float, weight_soft_loss: float,
    beta: float, ignore_index: int, temperature: float, chunk_size: int, need_input: bool, need_weight: bool,
    need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(loss, soft_loss, hard_loss, grad_student_input, grad_student_weight, grad_student_bias)`` of
    ``chunked_loss``'s JSD loss, the gradients for an upstream gradient of 1, each empty unless asked."""
    tensors = (student_input, student_weight, teacher_input, teacher_weight, target, student_bias, teacher_bias)
    needs = (need_input, need_weight, False, False, False, need_bias, False)
    options = (weight_hard_loss, weight_soft_loss, beta, ignore_index, temperature, True, chunk_size, True)
    outputs, grads = _loss_and_grads(ChunkedJSDFunction.apply, tensors, options, needs)
    return *outputs, grads[0], grads[1], grads[5]


@fused_linear_jsd_distillation.register_fake
def _(student_input, student_weight, teacher_input, teacher_weight, target, student_bias, teacher_bias,
      weight_hard_loss, weight_soft_loss, beta, ignore_index, temperature, chunk_size, need_input, need_weight,
      need_bias):  # fmt: skip
    dtype = torch.float64 if student_input.dtype == torch.float64 else torch.float32
    losses = [student_input.new_empty((), dtype=dtype) for _ in range(3)]
    return (
        *losses,
        _empty_or_like(student_input, need_input),
        _empty_or_like(student_weight, need_weight),
        _empty(student_input) if student_bias is None else _empty_or_like(student_bias, need_bias),
    )


fused_linear_jsd_distillation.register_autograd(_scaled_backward((0, 1, 5), 16), setup_context=_scaled_setup(3))


def _jsd_distillation_twin(
    student_input, student_weight, teacher_input, teacher_weight, true_labels, student_bias=None, teacher_bias=None,
    weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5, ignore_index=-100, temperature=1.0, compiled=True,
    chunk_size=1024, return_soft_hard_loss=False,
):  # fmt: skip
    """``chunked_loss``'s ``LigerFusedLinearJSDFunction.apply`` under compile."""
    ChunkedJSDFunction.check_beta(beta)
    check_distillation_inputs(
        student_input, student_weight, teacher_input, teacher_weight, true_labels, student_bias, teacher_bias
    )
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and t is not None and t.requires_grad for t in (student_input, student_weight, student_bias)]
    loss, soft, hard, *_ = fused_linear_jsd_distillation(
        student_input, student_weight, teacher_input, teacher_weight, true_labels, student_bias, teacher_bias,
        float(weight_hard_loss), float(weight_soft_loss), float(beta), int(ignore_index), float(temperature),
        int(chunk_size), *needs,
    )  # fmt: skip
    return (loss, soft, hard) if return_soft_hard_loss else loss


if ENABLED:
    _TWINS.update(
        jsd=_jsd_twin,
        fused_linear_jsd=_fused_linear_jsd_twin,
        fused_linear_jsd_distillation=_jsd_distillation_twin,
    )
