"""Fused linear JSD: the generalized JSD (``ops/jsd.py``) of a student's and a teacher's
temperature-scaled softmax, straight from their hidden states and heads, without the ``[N, V]``
logits of either.

``log q = log_softmax(student_input @ student_weight.T / T)``, ``log p = log_softmax(teacher_input @
teacher_weight.T / T)``; the loss is ``jsd`` of (log q, log p) with ``beta = jsd_beta``: summed
over rows that count (``shift_labels`` not ``ignore_index``; all rows without labels) and divided
by their number. Student and teacher may have different hidden sizes, not different vocabularies.

How: the token-chunk loop of ``ops/divergence.py`` (``head_chunks``). Per chunk, the JSD row
kernel of ``ops/jsd_distillation_rows.py`` (shared with the chunked distillation loss) reads both
fp32 logit rows three times: the two log-sum-exps (online), then the row's loss and the sums
``S = sum_v dL/dlog q_v`` (and the teacher's), then ``dL/dz = (dL/dlog q - q S) / T`` for each
head that needs a gradient, times the row's factor (1 / rows counted, 0 at ignored rows). Every
gradient is one fp32 accumulator rounded once: ``grad_x`` is kept in fp32 until the backward knows
the upstream gradient, ``grad_W`` accumulated over chunks in fp32 (``accum_dtype``: in that dtype
instead, for a smaller buffer) and scaled, then rounded, in the backward. Flops: 6NHV for the
student head, 2NHV for a frozen teacher (8 for a trained one). Memory beyond the inputs: one chunk
(``CHUNK_BUDGET_BYTES``), the fp32 input gradient and the weight-gradient accumulator ([V, H] fp32
unless ``accum_dtype`` says otherwise).

Both heads are differentiable: the teacher's gradients come from the same kernel (the formula is
symmetric in (q, 1 - beta) and (p, beta)); a frozen teacher costs no gradient work.
"""

import torch
import torch.nn.functional as F

from liger_kernel.ops.cross_entropy import RemembersGradMode, caller_grad_mode, one_grad_per_argument
from liger_kernel.ops.divergence import (
    Head,
    as_flat_rows,
    check_accum_dtype,
    check_has_label,
    check_head,
    check_labels,
    check_temperature,
    head_chunks,
    masked_rows,
    reference_outputs,
    scale_in_place,
    scaled_grads,
    student_grads,
    valid_rows,
)
from liger_kernel.ops.jsd import check_jsd_options, jsd_core
from liger_kernel.ops.jsd_distillation_rows import jsd_logit_rows
from liger_kernel.ops.kl_div import compute_dtype
from liger_kernel.ops.utils import fallback_backward
from liger_kernel.utils import use_triton

# ----------------------------------------------------------------------------- the forward


def fused_linear_jsd_core(heads, labels, beta, ignore_index, temperature, accum_dtype):
    """Loss (fp32, 0-dim) and, for an upstream gradient of 1, ``(grad_x, grad_w)`` per head as
    ``head_chunks`` returns them (None where not needed). ``heads``: student, teacher."""
    n_rows, device = heads[0].x.shape[0], heads[0].x.device
    mask, count = valid_rows(labels, ignore_index, n_rows, device)
    divisor = torch.where(count > 0, count, 1.0)
    row_scale = (torch.ones(n_rows, device=device) if mask is None else mask.to(torch.float32)) / divisor
    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=device)

    def run_rows(start, end, logits, dlogits):
        (zs, zt), (dzs, dzt) = logits, dlogits
        loss_rows[start:end] = jsd_logit_rows(
            zs, zt, beta, temperature, scale=row_scale[start:end], grad_s=dzs, grad_t=dzt
        )[0]

    grad_x, grad_w = head_chunks(heads, run_rows, accum_dtype)
    loss = masked_rows(loss_rows, mask).sum() / divisor
    return loss, grad_x, grad_w


def fused_linear_jsd_reference(
    student_input,
    student_weight,
    teacher_input,
    teacher_weight,
    shift_labels=None,
    jsd_beta=0.5,
    ignore_index=-100,
    temperature=1.0,
):
    """The spec and the CPU fallback: the logits in the inputs' dtype (as an ``lm_head`` computes
    them), then ``jsd`` of their fp32 (fp64) log-softmax at the temperature; loss in the student
    input's dtype."""
    compute = compute_dtype(student_input, teacher_input)
    n_vocab = student_weight.shape[0]
    log_q = torch.log_softmax(
        F.linear(student_input, student_weight).reshape(-1, n_vocab).to(compute) / temperature, -1
    )
    log_p = torch.log_softmax(
        F.linear(teacher_input, teacher_weight).reshape(-1, n_vocab).to(compute) / temperature, -1
    )
    return jsd_core(log_q, log_p, shift_labels, jsd_beta, ignore_index, student_input.dtype)


def check_fljsd_inputs(student_input, student_weight, teacher_input, teacher_weight, shift_labels, jsd_beta,
                       temperature, accum_dtype, jsd_impl, jsd_mode):  # fmt: skip
    """The labels as [N] (or None) and the temperature, once every argument is valid."""
    check_head("student_input", student_input, "student_weight", student_weight)
    check_head("teacher_input", teacher_input, "teacher_weight", teacher_weight)
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"`student_weight` has {student_weight.shape[0]} rows (vocabulary) but `teacher_weight` has "
            f"{teacher_weight.shape[0]}: both heads must share the vocabulary."
        )
    n_rows = student_input.numel() // student_input.shape[-1]
    if teacher_input.numel() // teacher_input.shape[-1] != n_rows:
        raise ValueError(
            f"`student_input` has {n_rows} rows but `teacher_input` has "
            f"{teacher_input.numel() // teacher_input.shape[-1]}: one teacher row per student row."
        )
    check_jsd_options("jsd_beta", jsd_beta, jsd_impl, jsd_mode)
    check_accum_dtype(accum_dtype)
    labels = check_labels(shift_labels, n_rows, {"student_input": student_input, "teacher_input": teacher_input})
    return labels, check_temperature(temperature)


def runs_kernels(student_input, teacher_input, jsd_impl) -> bool:
    return (
        jsd_impl != "torch"
        and use_triton(student_input)
        and compute_dtype(student_input, teacher_input) == torch.float32
    )


class LigerFusedLinearJSDFunction(RemembersGradMode):
    """``forward(student_input, student_weight, teacher_input, teacher_weight, shift_labels=None,
    jsd_beta=0.5, ignore_index=-100, temperature=1.0, accum_dtype=None, jsd_impl=None,
    jsd_mode=None)``: the loss of the module docstring for inputs [..., H_s] / [..., H_t] and heads
    [V, H_s] / [V, H_t]; a scalar in the student input's dtype. ``accum_dtype``: the dtype the
    weight gradients accumulate in (None: fp32, exact); ``jsd_impl``: None or "triton" (the
    kernels), "torch" (the reference); ``jsd_mode``: None."""

    @staticmethod
    def forward(
        ctx,
        student_input,
        student_weight,
        teacher_input,
        teacher_weight,
        shift_labels=None,
        jsd_beta=0.5,
        ignore_index=-100,
        temperature=1.0,
        accum_dtype=None,
        jsd_impl=None,
        jsd_mode=None,
    ):
        labels, temperature = check_fljsd_inputs(
            student_input, student_weight, teacher_input, teacher_weight, shift_labels, jsd_beta, temperature,
            accum_dtype, jsd_impl, jsd_mode,
        )  # fmt: skip
        needs = [caller_grad_mode.enabled and ctx.needs_input_grad[i] for i in range(4)]
        ctx.use_triton = runs_kernels(student_input, teacher_input, jsd_impl)
        if not ctx.use_triton:
            args = (student_input, student_weight, teacher_input, teacher_weight, shift_labels, jsd_beta, ignore_index)
            return reference_outputs(ctx, fused_linear_jsd_reference, any(needs), *args, temperature)
        heads = [
            Head(as_flat_rows(student_input), student_weight.contiguous(), needs[0], needs[1]),
            Head(as_flat_rows(teacher_input), teacher_weight.contiguous(), needs[2], needs[3]),
        ]
        loss, grad_x, grad_w = fused_linear_jsd_core(heads, labels, jsd_beta, ignore_index, temperature, accum_dtype)
        ctx.grads = [grad_x[0], grad_w[0], grad_x[1], grad_w[1]]
        ctx.like = [(t.dtype, t.shape) for t in (student_input, student_weight, teacher_input, teacher_weight)]
        return loss.to(student_input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_output)[:4], 11)
        grads, like = ctx.grads, ctx.like
        del ctx.grads, ctx.like
        return one_grad_per_argument(scaled_grads(grads, like, grad_output), 11)


def fused_linear_jsd_forward(
    student_input,
    student_weight,
    teacher_input,
    teacher_weight,
    shift_labels,
    jsd_beta,
    ignore_index,
    has_label,
    temperature,
    jsd_impl=None,
    jsd_mode=None,
    accum_dtype=None,
):
    """The peer's low-level forward, no autograd: ``(loss, grad_input, grad_weight)``, the student's
    gradients for an upstream gradient of 1 in its dtypes. ``has_label``: whether ``shift_labels``
    is given. Scale them with ``fused_linear_jsd_backward``."""
    check_has_label(has_label, shift_labels)
    return student_grads(
        LigerFusedLinearJSDFunction, student_input, student_weight, teacher_input, teacher_weight, shift_labels,
        jsd_beta, ignore_index, temperature, accum_dtype, jsd_impl, jsd_mode,
    )  # fmt: skip


def fused_linear_jsd_backward(grad_output, grad_input, grad_weight):
    """The peer's low-level backward: the gradients of ``fused_linear_jsd_forward`` times the scalar
    ``grad_output``, in place (nothing to do where it is exactly 1); returns them."""
    return scale_in_place(grad_output, grad_input, grad_weight)
