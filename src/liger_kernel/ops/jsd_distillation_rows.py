"""The generalized JSD distillation loss of logit rows and its gradient, in one kernel per row.

For fp32 student logits ``z`` and teacher logits ``zt`` (rows of one chunk; the teacher's in any
float dtype, bf16 as an ``lm_head`` gives them, read as fp32), temperature ``T``,
``p = softmax(z / T)``, ``q = softmax(zt / T)``, ``m = (1 - beta) p + beta q``, per row::

    soft = KL(q || p)                                   beta = 0
           KL(p || q)                                   beta = 1
           beta KL(q || m) + (1 - beta) KL(p || m)      otherwise   (TRL's generalized_jsd_loss)
    hard = logsumexp(z) - z[y]                          (cross-entropy, unscaled logits)

and ``scale * d(w_hard * hard + w_soft * soft) / dz``, where ``d soft / d(z / T)`` is ``p - q``,
``p (log p - log q - KL(p || q))`` and ``(1 - beta) p (log p - log m - KL(p || m))`` (the gradient
of ``beta KL(q || m) + (1 - beta) KL(p || m)`` in ``p`` is ``(1 - beta) log(p / m)``, then through
the softmax). Rows labelled ``ignore_index`` give 0 and a zero gradient.

One program per row, three passes over both rows (log-sum-exps; the loss and the row's KL term;
the gradient, written in the gradient buffer's dtype): 20 bytes per logit with bf16 teacher
logits, against 6 for writing both logits. The middle pass runs backwards (``REVERSE_MIDDLE_PASS``)
so that each pass starts on the columns the previous one just read, still in L2 (a row of both
logits is 770 KB; about 380 KB of L2 per resident row on an H200). ``log m`` is a log-sum-exp
of ``log p + log(1 - beta)`` and ``log q + log beta``, finite wherever the logits are, so
underflowed probabilities give 0 terms, never NaN.
"""

import math

import torch
import triton
import triton.language as tl

from liger_kernel.ops.cross_entropy import finish_logsumexp, online_logsumexp_step
from liger_kernel.ops.fused_linear_cross_entropy import _round_to_bf16
from liger_kernel.ops.utils import next_power_of_2

FORWARD_KL, REVERSE_KL, MIXTURE = 0, 1, 2

# The loss pass runs from the last column block to the first (module docstring).
REVERSE_MIDDLE_PASS = True

# Columns per step of a pass (16 warps from 4096 on): 24 KB of fp32 and bf16 logits in flight.
BLOCK_COLS = 4096


def jsd_rows_reference(student_logits, teacher_logits, beta):
    """The spec: the generalized JSD of each row of logits ``[n, V]`` already over the temperature,
    in fp32 (float64 stays)."""
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_p = torch.log_softmax(student_logits.to(dtype), -1)
    log_q = torch.log_softmax(teacher_logits.to(dtype), -1)
    if beta == 0:
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if beta == 1:
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    log_m = torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))
    return beta * (log_q.exp() * (log_q - log_m)).sum(-1) + (1 - beta) * (log_p.exp() * (log_p - log_m)).sum(-1)


@triton.jit
def _log_mixture(lp, lq, log_w_student, log_w_teacher):
    """``log((1 - beta) exp(lp) + beta exp(lq))`` as a two-term log-sum-exp (one exp, one log)."""
    a = lp + log_w_student
    b = lq + log_w_teacher
    return tl.maximum(a, b) + tl.log(1.0 + tl.exp(-tl.abs(a - b)))


@triton.jit
def _jsd_rows_kernel(
    z_ptr,  # [n, V] fp32 student logits, unit column stride
    stride_z,
    t_ptr,  # [n, V] teacher logits (any float dtype, read as fp32)
    stride_t,
    y_ptr,  # [n] labels
    g_ptr,  # [n, V] out: scale * dloss/dz (GRAD)
    stride_g,
    soft_ptr,  # [n] fp32 out
    hard_ptr,  # [n] fp32 out
    scale_ptr,  # fp32 scalar: the gradient's factor (1 / number of non-ignored tokens)
    n_cols,
    ignore_index,
    inv_t,
    beta,
    log_w_student,  # log(1 - beta)
    log_w_teacher,  # log(beta)
    w_hard,
    w_soft,
    MODE: tl.constexpr,
    CE: tl.constexpr,
    GRAD: tl.constexpr,
    UNIT_T: tl.constexpr,  # temperature 1: the cross-entropy reuses the scaled log-sum-exp
    TO_BF16: tl.constexpr,
    REVERSE: tl.constexpr,  # the loss pass from the last column block to the first
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    t_row = t_ptr + row * stride_t
    g_row = g_ptr + row * stride_g
    offs = tl.arange(0, BLOCK)
    label = tl.load(y_ptr + row)
    if label == ignore_index:
        tl.store(soft_ptr + row, 0.0)
        tl.store(hard_ptr + row, 0.0)
        if GRAD:
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                tl.store(g_row + cols, tl.zeros([BLOCK], tl.float32).to(g_ptr.dtype.element_ty), mask=cols < n_cols)
    else:
        m_s = tl.full([BLOCK], -1e30, tl.float32)
        d_s = tl.zeros([BLOCK], tl.float32)
        m_t = tl.full([BLOCK], -1e30, tl.float32)
        d_t = tl.zeros([BLOCK], tl.float32)
        m_z = tl.full([BLOCK], -1e30, tl.float32)
        d_z = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            mask = cols < n_cols
            z = tl.load(z_row + cols, mask=mask, other=float("-inf"))
            t = tl.load(t_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            m_s, d_s = online_logsumexp_step(z * inv_t, m_s, d_s)
            m_t, d_t = online_logsumexp_step(t * inv_t, m_t, d_t)
            if CE and not UNIT_T:
                m_z, d_z = online_logsumexp_step(z, m_z, d_z)
        lse_s = finish_logsumexp(m_s, d_s)
        lse_t = finish_logsumexp(m_t, d_t)
        if CE and not UNIT_T:
            lse_z = finish_logsumexp(m_z, d_z)
        elif CE:
            lse_z = lse_s

        soft = tl.zeros([BLOCK], tl.float32)
        kl_pm = tl.zeros([BLOCK], tl.float32)  # KL(p || m), or KL(p || q) for REVERSE_KL
        n_blocks = tl.cdiv(n_cols, BLOCK)
        for i in range(0, n_blocks):
            if REVERSE:
                start = (n_blocks - 1 - i) * BLOCK
            else:
                start = i * BLOCK
            cols = start + offs
            mask = cols < n_cols
            lp = tl.load(z_row + cols, mask=mask, other=0.0) * inv_t - lse_s
            lq = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_t
            if MODE == 0:
                soft += tl.where(mask, tl.exp(lq) * (lq - lp), 0.0)
            elif MODE == 1:
                kl_pm += tl.where(mask, tl.exp(lp) * (lp - lq), 0.0)
            else:
                lm = _log_mixture(lp, lq, log_w_student, log_w_teacher)
                kl_pm += tl.where(mask, tl.exp(lp) * (lp - lm), 0.0)
                soft += tl.where(mask, tl.exp(lq) * (lq - lm), 0.0)
        kl_row = tl.sum(kl_pm, 0)
        if MODE == 0:
            soft_row = tl.sum(soft, 0)
        elif MODE == 1:
            soft_row = kl_row
        else:
            soft_row = beta * tl.sum(soft, 0) + (1.0 - beta) * kl_row
        tl.store(soft_ptr + row, soft_row)
        if CE:
            tl.store(hard_ptr + row, lse_z - tl.load(z_row + label))
        else:
            tl.store(hard_ptr + row, 0.0)

        if GRAD:
            scale = tl.load(scale_ptr)
            coef_soft = w_soft * inv_t * scale
            coef_hard = w_hard * scale
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                mask = cols < n_cols
                z = tl.load(z_row + cols, mask=mask, other=0.0)
                lp = z * inv_t - lse_s
                lq = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_t
                p = tl.exp(lp)
                if MODE == 0:
                    g = coef_soft * (p - tl.exp(lq))
                elif MODE == 1:
                    g = coef_soft * p * (lp - lq - kl_row)
                else:
                    lm = _log_mixture(lp, lq, log_w_student, log_w_teacher)
                    g = (coef_soft * (1.0 - beta)) * p * (lp - lm - kl_row)
                if CE:
                    p_z = p if UNIT_T else tl.exp(z - lse_z)  # the unscaled softmax
                    g += coef_hard * (p_z - tl.where(cols == label, 1.0, 0.0))
                if TO_BF16:
                    g = _round_to_bf16(g)
                tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=mask)


def jsd_distillation_rows(
    student_logits, teacher_logits, target, grad_out, scale, beta, temperature, ignore_index, weight_hard_loss,
    weight_soft_loss, compute_ce_loss,
):  # fmt: skip
    """Summed ``(soft, hard)`` (fp32 0-dim) of logits ``[n, V]`` (module docstring), and the
    gradient into ``grad_out`` ([n, V], unit column stride) unless it is None. ``scale``: an fp32
    device scalar (no sync)."""
    n_rows, n_cols = student_logits.shape
    rows = torch.empty(2, n_rows, dtype=torch.float32, device=student_logits.device)  # every row written
    soft, hard = rows
    if n_rows == 0:
        return rows.new_zeros(()), rows.new_zeros(())
    mode = FORWARD_KL if beta == 0 else REVERSE_KL if beta == 1 else MIXTURE
    mixture = mode == MIXTURE
    grad = grad_out is not None
    block = min(BLOCK_COLS, next_power_of_2(n_cols))
    _jsd_rows_kernel[(n_rows,)](
        student_logits,
        student_logits.stride(0),
        teacher_logits,
        teacher_logits.stride(0),
        target,
        grad_out if grad else soft,
        grad_out.stride(0) if grad else 0,
        soft,
        hard,
        scale.reshape(1),
        n_cols,
        ignore_index,
        1.0 / temperature,
        float(beta),
        math.log1p(-beta) if mixture else 0.0,
        math.log(beta) if mixture else 0.0,
        float(weight_hard_loss),
        float(weight_soft_loss),
        MODE=mode,
        CE=bool(compute_ce_loss),
        GRAD=grad,
        UNIT_T=temperature == 1,
        TO_BF16=grad and grad_out.dtype == torch.bfloat16,
        REVERSE=REVERSE_MIDDLE_PASS,
        BLOCK=block,
        num_warps=16 if block >= 4096 else 8,
    )
    soft_sum, hard_sum = rows.sum(1)  # one reduction for both
    return soft_sum, hard_sum
