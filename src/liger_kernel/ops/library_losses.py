"""The divergence and GRPO losses as ``torch.library`` custom ops, as ``ops/library.py`` registers the
first ones (see there: fake implementations, autograd formulas, twins that ``apply_of`` routes to
while Dynamo traces, the eager path untouched): KL divergence, TVD, the fused cross-entropy + TVD,
the fused linear KL divergence, the GRPO loss on logits and the selective log-softmax.

KL, TVD, the fused CE + TVD and the selective log-softmax have a forward op and a backward op on
their kernels (the fused CE + TVD and the log-softmax hand their per-token statistics from one to
the other). The fused linear KL divergence computes its gradients in the forward for a scalar
reduction, as its Function does (the backward scales them, as for the fused linear
cross-entropy); for ``reduction="none"`` or a target that needs a gradient its backward op runs
the Function again with the upstream gradient (one more chunk pass, 2NHV flops, than eager). The
GRPO loss's backward op runs its Function again too (one more read of the logits than eager; the
normalizers are recomputed, an all-reduce under ``torch.distributed`` without
``num_items_in_batch``). Checks that read tensor values (labels and token ids in range) run
inside the ops, as eager.
"""

import torch
from torch import Tensor

from liger_kernel.ops.divergence import check_pair, check_reduction
from liger_kernel.ops.fused_ce_tvd import (
    ce_tvd_kernel_backward,
    ce_tvd_kernel_forward,
    check_ce_tvd_arguments,
    check_ce_tvd_inputs,
    fused_ce_tvd_reference,
)
from liger_kernel.ops.fused_linear_kl_div import LigerFusedLinearKLDivFunction, check_flkl_inputs
from liger_kernel.ops.grpo_loss import (
    GrpoLossFunction,
    GRPOOptions,
    check_logits,
    logits_grad,
    logsoftmax_stats,
    selective_log_softmax_reference,
)
from liger_kernel.ops.kl_div import kl_div_kernel_backward, kl_div_kernel_forward, kl_div_reference, runs_kernels
from liger_kernel.ops.library import _TWINS, ENABLED, _custom_op, _empty, _kernels, _or_zeros, _reference_grads
from liger_kernel.ops.library_jsd import (
    _empty_or_like,
    _loss_and_grads,
    needed_grads,
    pair_grads_fake,
    register_pair_autograd,
)
from liger_kernel.ops.tvd import check_tvd_inputs, tvd_kernel_backward, tvd_kernel_forward, tvd_reference


def _flat(labels):
    return None if labels is None else labels.reshape(-1).contiguous()


def _loss_fake(a, b, reduction, shape=None):
    """A loss in ``promote_types`` of the inputs' dtypes: ``shape`` (default ``a``'s) for ``none``, else 0-dim."""
    shape = a.shape if shape is None else shape
    return a.new_empty(shape if reduction == "none" else (), dtype=torch.promote_types(a.dtype, b.dtype))


# ----------------------------------------------------------------------------- KL divergence and TVD


@_custom_op("kl_div")
def kl_div(y_pred: Tensor, y_true: Tensor, reduction: str, log_target: bool, eps: float) -> Tensor:
    """The loss (per element, contiguous, for ``none``)."""
    if not runs_kernels(y_pred, y_true):
        return kl_div_reference(y_pred, y_true, reduction, log_target, eps).contiguous()
    return kl_div_kernel_forward(y_pred, y_true, reduction, log_target, eps)


@kl_div.register_fake
def _(y_pred, y_true, reduction, log_target, eps):
    return _loss_fake(y_pred, y_true, reduction)


@_custom_op("kl_div_backward")
def kl_div_backward(
    grad: Tensor, y_pred: Tensor, y_true: Tensor, reduction: str, log_target: bool, eps: float, need_pred: bool,
    need_true: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The gradients in ``y_pred`` and ``y_true`` (each empty unless asked)."""
    if not runs_kernels(y_pred, y_true):
        reference = lambda x, y: kl_div_reference(x, y, reduction, log_target, eps)  # noqa: E731
        grads = _reference_grads(reference, (y_pred, y_true), (grad,))
    else:
        grads = kl_div_kernel_backward(grad, y_pred, y_true, reduction, log_target, eps, need_pred, need_true)
    return needed_grads(grads, (y_pred, y_true), (need_pred, need_true))


kl_div_backward.register_fake(pair_grads_fake)
register_pair_autograd(kl_div, kl_div_backward, 2)


def _kl_div_twin(y_pred, y_true, reduction="batchmean", log_target=False, eps=1e-10):
    """``LigerKLDivLossFunction.apply`` under compile."""
    check_pair("y_pred", y_pred, "y_true", y_true)
    check_reduction(reduction)
    return kl_div(y_pred, y_true, reduction, bool(log_target), float(eps))


@_custom_op("tvd")
def tvd(p: Tensor, q: Tensor, shift_labels: Tensor | None, reduction: str, ignore_index: int) -> Tensor:
    """The loss (per element, contiguous, for ``none``)."""
    if not runs_kernels(p, q):
        return tvd_reference(p, q, shift_labels, reduction, ignore_index).contiguous()
    return tvd_kernel_forward(p, q, _flat(shift_labels), reduction, ignore_index)


@tvd.register_fake
def _(p, q, shift_labels, reduction, ignore_index):
    return _loss_fake(p, q, reduction)


@_custom_op("tvd_backward")
def tvd_backward(
    grad: Tensor, p: Tensor, q: Tensor, shift_labels: Tensor | None, reduction: str, ignore_index: int,
    need_p: bool, need_q: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The gradients in ``p`` and ``q`` (each empty unless asked)."""
    if not runs_kernels(p, q):
        reference = lambda x, y: tvd_reference(x, y, shift_labels, reduction, ignore_index)  # noqa: E731
        grads = _reference_grads(reference, (p, q), (grad,))
    else:
        grads = tvd_kernel_backward(grad, p, q, _flat(shift_labels), reduction, ignore_index, need_p, need_q)
    return needed_grads(grads, (p, q), (need_p, need_q))


tvd_backward.register_fake(pair_grads_fake)
register_pair_autograd(tvd, tvd_backward, 3)


def _tvd_twin(p, q, shift_labels=None, reduction="batchmean", ignore_index=-100):
    """``LigerTVDLossFunction.apply`` under compile."""
    check_tvd_inputs(p, q, shift_labels, reduction)
    return tvd(p, q, shift_labels, reduction, int(ignore_index))


# ----------------------------------------------------------------------------- fused cross-entropy + TVD


def _token_rows(logits: Tensor) -> int:
    return logits.numel() // max(logits.shape[-1], 1)


@_custom_op("fused_ce_tvd")
def fused_ce_tvd(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ce, tvd, stats)``: ``stats`` the ``[6, N]`` fp32 per-token values the backward reads
    (zeros on the reference path). Checks the labels' range (one sync, as eager)."""
    labels = check_ce_tvd_inputs(student_logits, teacher_logits, target, ignore_index)
    if not runs_kernels(student_logits, teacher_logits):
        ce, tvd_loss = fused_ce_tvd_reference(student_logits, teacher_logits, target, ignore_index)
        return ce, tvd_loss, student_logits.new_zeros((6, labels.numel()), dtype=torch.float32)
    ce, tvd_loss, stats = ce_tvd_kernel_forward(student_logits, teacher_logits, labels, ignore_index)
    return ce.clone(), tvd_loss.clone(), stats  # two views of one [2] tensor otherwise


@fused_ce_tvd.register_fake
def _(student_logits, teacher_logits, target, ignore_index):
    loss = _loss_fake(student_logits, teacher_logits, "mean")
    return loss, loss.new_empty(()), student_logits.new_empty((6, _token_rows(student_logits)), dtype=torch.float32)


@_custom_op("fused_ce_tvd_backward")
def fused_ce_tvd_backward(
    grad_ce: Tensor, grad_tvd: Tensor, student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
    stats: Tensor, ignore_index: int, need_student: bool, need_teacher: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The gradients in both logits of ``grad_ce * ce + grad_tvd * tvd`` (each empty unless asked)."""
    tensors, needs = (student_logits, teacher_logits), (need_student, need_teacher)
    if not runs_kernels(student_logits, teacher_logits):
        reference = lambda zs, zt: fused_ce_tvd_reference(zs, zt, target, ignore_index)  # noqa: E731
        grads = _reference_grads(reference, tensors, (grad_ce, grad_tvd))
    else:
        rows = [t.reshape(-1, t.shape[-1]).contiguous() for t in tensors]
        labels = _flat(target)
        grads = ce_tvd_kernel_backward(
            grad_ce, grad_tvd, *rows, labels, stats, ignore_index, *needs, student_logits.shape
        )
    return needed_grads(grads, tensors, needs)


@fused_ce_tvd_backward.register_fake
def _(grad_ce, grad_tvd, student_logits, teacher_logits, *rest):
    return pair_grads_fake(grad_ce, student_logits, teacher_logits, *rest)


def _fused_ce_tvd_setup(ctx, inputs, output):
    student_logits, teacher_logits, target, ctx.ignore_index = inputs
    ctx.save_for_backward(student_logits, teacher_logits, target, output[2])
    ctx.mark_non_differentiable(output[2])


def _fused_ce_tvd_backward(ctx, grad_ce, grad_tvd, _):
    student_logits, teacher_logits, target, stats = ctx.saved_tensors
    needs = ctx.needs_input_grad[:2]
    upstream = [torch.zeros((), device=stats.device) if g is None else g for g in (grad_ce, grad_tvd)]
    grads = fused_ce_tvd_backward(*upstream, student_logits, teacher_logits, target, stats, ctx.ignore_index, *needs)
    return *(g if need else None for g, need in zip(grads, needs)), None, None


fused_ce_tvd.register_autograd(_fused_ce_tvd_backward, setup_context=_fused_ce_tvd_setup)


def _fused_ce_tvd_twin(student_logits, teacher_logits, target, ignore_index=-100):
    """``LigerFusedCETVDFunction.apply`` under compile."""
    check_ce_tvd_arguments(student_logits, teacher_logits, target, ignore_index)
    return fused_ce_tvd(student_logits, teacher_logits, target, ignore_index)[:2]


# ----------------------------------------------------------------------------- fused linear KL divergence


def _flkl_deferred(reduction: str, need_target: bool) -> bool:
    """Whether the gradients wait for the upstream one (per row, or the target's): the backward op."""
    return reduction == "none" or need_target


@_custom_op("fused_linear_kl_div")
def fused_linear_kl_div(
    student_input: Tensor, student_weight: Tensor, target: Tensor, shift_labels: Tensor | None, reduction: str,
    ignore_index: int, temperature: float, eps: float, accum_dtype: torch.dtype | None, need_input: bool,
    need_weight: bool, need_target: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(loss, grad_input, grad_weight)``, the gradients for an upstream gradient of 1, each empty
    unless asked (and when deferred: see the module docstring)."""
    tensors = (student_input, student_weight, target, shift_labels)
    needs = (False,) * 4 if _flkl_deferred(reduction, need_target) else (need_input, need_weight, False, False)
    options = (reduction, ignore_index, temperature, eps, accum_dtype)
    (loss,), grads = _loss_and_grads(LigerFusedLinearKLDivFunction.apply, tensors, options, needs)
    return loss, grads[0], grads[1]


@fused_linear_kl_div.register_fake
def _(student_input, student_weight, target, shift_labels, reduction, ignore_index, temperature, eps, accum_dtype,
      need_input, need_weight, need_target):  # fmt: skip
    now = not _flkl_deferred(reduction, need_target)
    return (
        _loss_fake(student_input, target, reduction, student_input.shape[:-1]),
        _empty_or_like(student_input, now and need_input),
        _empty_or_like(student_weight, now and need_weight),
    )


@_custom_op("fused_linear_kl_div_backward")
def fused_linear_kl_div_backward(
    grad: Tensor, student_input: Tensor, student_weight: Tensor, target: Tensor, shift_labels: Tensor | None,
    reduction: str, ignore_index: int, temperature: float, eps: float, accum_dtype: torch.dtype | None,
    need_input: bool, need_weight: bool, need_target: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The gradients for the upstream ``grad`` (the Function again: forward and backward)."""
    tensors = (student_input, student_weight, target, shift_labels)
    options = (reduction, ignore_index, temperature, eps, accum_dtype)
    needs = (need_input, need_weight, need_target, False)
    _, grads = _loss_and_grads(LigerFusedLinearKLDivFunction.apply, tensors, options, needs, (grad,))
    return needed_grads(grads[:3], tensors[:3], needs[:3])


@fused_linear_kl_div_backward.register_fake
def _(grad, student_input, student_weight, target, *rest):
    return tuple(_empty_or_like(t, need) for t, need in zip((student_input, student_weight, target), rest[-3:]))


def _flkl_setup(ctx, inputs, output):
    *tensors, reduction, ignore_index, temperature, eps, accum_dtype = inputs[:9]
    ctx.needs = inputs[9:]
    ctx.deferred = _flkl_deferred(reduction, ctx.needs[2])
    ctx.options = (reduction, ignore_index, temperature, eps, accum_dtype)
    ctx.save_for_backward(*tensors, *output[1:])
    ctx.mark_non_differentiable(*output[1:])


def _flkl_backward(ctx, grad, *_):
    student_input, student_weight, target, shift_labels, *grads = ctx.saved_tensors
    if ctx.deferred:
        tensors = (student_input, student_weight, target, shift_labels)
        grads = fused_linear_kl_div_backward(grad, *tensors, *ctx.options, *ctx.needs)
    else:
        grads = [g * grad for g in grads] + [None]
    return *(g if need else None for g, need in zip(grads, ctx.needs)), *[None] * 9


fused_linear_kl_div.register_autograd(_flkl_backward, setup_context=_flkl_setup)


def _fused_linear_kl_div_twin(
    student_input, student_weight, target, shift_labels=None, reduction="batchmean", ignore_index=-100,
    temperature=1.0, eps=1e-10, accum_dtype=None,
):  # fmt: skip
    """``LigerFusedLinearKLDivFunction.apply`` under compile."""
    _, temperature = check_flkl_inputs(
        student_input, student_weight, target, shift_labels, reduction, temperature, accum_dtype
    )
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and t.requires_grad for t in (student_input, student_weight, target)]
    return fused_linear_kl_div(
        student_input, student_weight, target, shift_labels, reduction, int(ignore_index), temperature, float(eps),
        accum_dtype, *needs,
    )[0]  # fmt: skip


# ----------------------------------------------------------------------------- GRPO on logits


def _grpo_apply(logits, old_logp, ref_logp, completion_ids, advantages, completion_mask, vllm_is_ratio,
                num_items_in_batch, phi_seq, temperature, beta, eps_low, eps_high, loss_type, max_completion_length,
                reduce, importance_sampling_level, sapo_temperature_pos, sapo_temperature_neg, delta,
                use_bias_correction_kl):  # fmt: skip
    """``GrpoLossFunction.apply`` from the op's arguments (tensors first)."""
    return GrpoLossFunction.apply(
        logits, old_logp, ref_logp, completion_ids, advantages, completion_mask, temperature, beta, eps_low,
        eps_high, False, loss_type, max_completion_length, reduce, importance_sampling_level, sapo_temperature_pos,
        sapo_temperature_neg, vllm_is_ratio, delta, use_bias_correction_kl, num_items_in_batch, phi_seq,
    )  # fmt: skip


@_custom_op("grpo_loss")
def grpo_loss(
    logits: Tensor, old_logp: Tensor | None, ref_logp: Tensor | None, completion_ids: Tensor, advantages: Tensor,
    completion_mask: Tensor | None, vllm_is_ratio: Tensor | None, num_items_in_batch: Tensor | None,
    phi_seq: Tensor | None, temperature: float, beta: float, eps_low: float, eps_high: float, loss_type: str,
    max_completion_length: int | None, reduce: bool, importance_sampling_level: str, sapo_temperature_pos: float,
    sapo_temperature_neg: float, delta: float | None, use_bias_correction_kl: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(loss, kl, clip)`` as ``GrpoLossFunction`` returns them, ``kl`` empty at beta 0."""
    with torch.no_grad():
        loss, kl, clip = _grpo_apply(*_grpo_arguments(locals()))
    return loss, _empty(loss) if kl is None else kl, clip


def _grpo_arguments(arguments: dict) -> list:
    """The op's arguments in order, from its ``locals()`` (the tensors first)."""
    return [arguments[name] for name in _GRPO_ARGUMENTS]


_GRPO_ARGUMENTS = _grpo_apply.__code__.co_varnames[: _grpo_apply.__code__.co_argcount]


@grpo_loss.register_fake
def _(logits, old_logp, ref_logp, completion_ids, advantages, completion_mask, vllm_is_ratio, num_items_in_batch,
      phi_seq, temperature, beta, eps_low, eps_high, loss_type, max_completion_length, reduce, *rest):  # fmt: skip
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    shape = () if reduce else completion_ids.shape
    loss = logits.new_empty(shape, dtype=dtype)
    return loss, loss.new_empty(shape) if beta != 0.0 else _empty(loss), loss.new_empty(shape)


@_custom_op("grpo_loss_backward")
def grpo_loss_backward(
    grad_loss: Tensor, grad_kl: Tensor | None, logits: Tensor, old_logp: Tensor | None, ref_logp: Tensor | None,
    completion_ids: Tensor, advantages: Tensor, completion_mask: Tensor | None, vllm_is_ratio: Tensor | None,
    num_items_in_batch: Tensor | None, phi_seq: Tensor | None, temperature: float, beta: float, eps_low: float,
    eps_high: float, loss_type: str, max_completion_length: int | None, reduce: bool, importance_sampling_level: str,
    sapo_temperature_pos: float, sapo_temperature_neg: float, delta: float | None, use_bias_correction_kl: bool,
) -> Tensor:  # fmt: skip
    """The logits' gradient for the upstream gradients of the loss and (per token) the KL."""
    arguments = _grpo_arguments(locals())
    tensors, options = arguments[:9], arguments[9:]
    needs = (True,) + (False,) * 8
    _, grads = _loss_and_grads(_grpo_apply, tensors, options, needs, (grad_loss, grad_kl))
    return grads[0].contiguous()


@grpo_loss_backward.register_fake
def _(grad_loss, grad_kl, logits, *rest):
    return logits.new_empty(logits.shape)


def _grpo_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.options = inputs[9:]
    beta, reduce = ctx.options[1], ctx.options[6]
    ctx.per_token_kl = not reduce and beta != 0.0  # reduced, the mean KL is a metric
    ctx.mark_non_differentiable(output[2], *([] if ctx.per_token_kl else [output[1]]))


def _grpo_backward(ctx, grad_loss, grad_kl, _):
    grad_kl = grad_kl if ctx.per_token_kl else None
    return grpo_loss_backward(grad_loss, grad_kl, *ctx.saved_tensors, *ctx.options), *[None] * 20


grpo_loss.register_autograd(_grpo_backward, setup_context=_grpo_setup)


def _grpo_loss_twin(
    logits, old_logp, ref_logp, completion_ids, advantages, completion_mask, temperature, beta, eps_low, eps_high,
    inplace, loss_type="grpo", max_completion_length=None, reduce=True, importance_sampling_level="token",
    sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vllm_is_ratio=None, delta=None,
    use_bias_correction_kl=False, num_items_in_batch=None, phi_seq=None,
):  # fmt: skip
    """``GrpoLossFunction.apply`` under compile (the logits and token ids are checked in the op)."""
    GRPOOptions(loss_type, beta, eps_low, eps_high, importance_sampling_level, max_completion_length).check()
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if num_items_in_batch is not None:
        num_items_in_batch = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=logits.device)
    loss, kl, clip = grpo_loss(
        logits, old_logp, ref_logp, completion_ids, advantages, completion_mask, vllm_is_ratio, num_items_in_batch,
        phi_seq, float(temperature), float(beta), float(eps_low), float(eps_high), loss_type, max_completion_length,
        bool(reduce), importance_sampling_level, float(sapo_temperature_pos), float(sapo_temperature_neg),
        None if delta is None else float(delta), bool(use_bias_correction_kl),
    )  # fmt: skip
    return loss, None if beta == 0.0 else kl, clip


# ----------------------------------------------------------------------------- selective log-softmax


@_custom_op("selective_log_softmax")
def selective_log_softmax(
    logits: Tensor, input_ids: Tensor, temperature: float, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(logp, lse)`` [B, T]: ``lse`` the fp32 log-sum-exps the backward reads (zeros on the
    reference path). Checks the token ids' range (one sync, as eager)."""
    logits = check_logits(logits, input_ids)
    if not _kernels(logits):
        logp = selective_log_softmax_reference(logits, input_ids, temperature, mask)
        return logp, logp.new_zeros(logp.shape, dtype=torch.float32)
    logp, lse = logsoftmax_stats(logits, input_ids.contiguous(), temperature)
    return (logp if mask is None else torch.where(mask.bool(), logp, 0.0)), lse


@selective_log_softmax.register_fake
def _(logits, input_ids, temperature, mask):
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty(input_ids.shape, dtype=dtype), logits.new_empty(input_ids.shape, dtype=torch.float32)


@_custom_op("selective_log_softmax_backward")
def selective_log_softmax_backward(
    grad: Tensor, logits: Tensor, input_ids: Tensor, lse: Tensor, temperature: float, mask: Tensor | None
) -> Tensor:
    """The logits' gradient, contiguous."""
    if not _kernels(logits):
        reference = lambda z: selective_log_softmax_reference(z, input_ids, temperature, mask)  # noqa: E731
        return _or_zeros(_reference_grads(reference, (logits,), (grad,))[0], logits).contiguous()
    logits = logits if logits.stride(2) == 1 else logits.contiguous()
    g = grad if mask is None else torch.where(mask.bool(), grad, 0.0)
    return logits_grad(logits, input_ids.contiguous(), lse, g, temperature)


@selective_log_softmax_backward.register_fake
def _(grad, logits, *rest):
    return logits.new_empty(logits.shape)


def _selective_setup(ctx, inputs, output):
    logits, input_ids, ctx.temperature, mask = inputs
    ctx.save_for_backward(logits, input_ids, output[1], mask)
    ctx.mark_non_differentiable(output[1])


def _selective_backward(ctx, grad, _):
    logits, input_ids, lse, mask = ctx.saved_tensors
    return selective_log_softmax_backward(grad, logits, input_ids, lse, ctx.temperature, mask), None, None, None


selective_log_softmax.register_autograd(_selective_backward, setup_context=_selective_setup)


def _selective_log_softmax_twin(logits, input_ids, temperature=0.9, mask=None):
    """``fused_selective_log_softmax`` under compile (the token ids are checked in the op)."""
    return selective_log_softmax(logits, input_ids, float(temperature), mask)[0]


if ENABLED:
    _TWINS.update(
        kl_div=_kl_div_twin,
        tvd=_tvd_twin,
        fused_ce_tvd=_fused_ce_tvd_twin,
        fused_linear_kl_div=_fused_linear_kl_div_twin,
        grpo_loss=_grpo_loss_twin,
        fused_selective_log_softmax=_selective_log_softmax_twin,
    )
