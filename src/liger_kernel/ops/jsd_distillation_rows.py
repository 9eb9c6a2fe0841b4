"""The generalized JSD of logit rows and its gradient, one kernel per row: the row op of both
fused-head JSD losses (``chunked_loss``'s distillation and ``ops/fused_linear_jsd.py``).

For student logits ``z`` and teacher logits ``zt`` (any float dtypes, read as fp32), temperature
``T``, ``p = softmax(z / T)``, ``q = softmax(zt / T)``, ``m = (1 - beta) p + beta q``, per row::

    soft = KL(q || p)                                   beta = 0
           KL(p || q)                                   beta = 1
           beta KL(q || m) + (1 - beta) KL(p || m)      otherwise   (TRL's generalized_jsd_loss)
    hard = logsumexp(z) - z[y]                          (cross-entropy, unscaled logits; ``CE``)

The per-element terms are ``divergence_terms`` of ``ops/divergence.py`` (the math of ``ops/jsd.py``
too) on the log-probabilities ``x = log p``, ``y = log q``: the row's loss and ``gx = dloss/dx``,
``gy = dloss/dy`` as free variables; through the softmax, ``dsoft/d(z / T) = gx - p sum(gx)`` (and
``gy - q sum(gy)`` for the teacher). The gradients, times the row's factor ``scale`` (one scalar,
or one per row)::

    d/dz  = scale (w_soft (gx - p sum gx) / T + w_hard (softmax(z) - onehot(y)))
    d/dzt = scale w_soft (gy - q sum gy) / T

Rows labelled ``ignore_index`` give 0 and a zero gradient.

One program per row, three passes over both rows: the log-sum-exps (online), the loss and the sums
of ``gx``/``gy``, then the gradients, written in their buffers' dtypes (rounded to nearest). The
student's gradient may be written over the student logits (same pointer: each element is read
before it is written, by the program that owns the row). The middle pass runs backwards
(``REVERSE_MIDDLE_PASS``) so that each pass starts on the columns the previous one just read,
still in L2 (a row of bf16 student and teacher logits is 513 KB at V = 128256; about 190 KB of
L2 per resident row on an H200). Bytes per logit: 4 per pass with bf16 logits (8 read + 2
written in all, after the L2 hits ~9), 6 per pass with fp32 student logits.
"""

import torch
import triton
import triton.language as tl

from liger_kernel.ops.cross_entropy import finish_logsumexp, online_logsumexp_step
from liger_kernel.ops.divergence import JSD_MIXTURE, Divergence, divergence_terms, jsd_kind, log_mixture, store_rounded
from liger_kernel.ops.jsd import jsd_elements
from liger_kernel.ops.utils import next_power_of_2

# The loss pass runs from the last column block to the first (module docstring).
REVERSE_MIDDLE_PASS = True

# Columns per step of a pass (16 warps from 4096 on).
BLOCK_COLS = 4096


def jsd_rows_reference(student_logits, teacher_logits, beta):
    """The spec: the generalized JSD of each row of logits ``[n, V]`` already over the temperature,
    in fp32 (float64 stays)."""
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    student, teacher = (torch.log_softmax(t.to(dtype), -1) for t in (student_logits, teacher_logits))
    return jsd_elements(student, teacher, beta).sum(-1)


@triton.jit
def _jsd_logit_rows_kernel(
    zs_ptr,  # [n, V] student logits, unit column stride
    stride_zs,
    zt_ptr,  # [n, V] teacher logits
    stride_zt,
    y_ptr,  # [n] labels (HAS_LABEL)
    soft_ptr,  # [n] fp32 out: the row's divergence
    hard_ptr,  # [n] fp32 out: the row's cross-entropy (CE)
    scale_ptr,  # fp32 factor of the gradients: [n] (stride 1) or a scalar (stride 0)
    stride_scale,
    dzs_ptr,  # [n, V] out (GRAD_S); may be zs_ptr
    stride_dzs,
    dzt_ptr,  # [n, V] out (GRAD_T)
    stride_dzt,
    n_cols,
    ignore_index,
    inv_t,
    beta,
    log_beta,
    log_1m_beta,
    w_hard,
    w_soft,
    KIND: tl.constexpr,
    CE: tl.constexpr,
    HAS_LABEL: tl.constexpr,
    GRAD_S: tl.constexpr,
    GRAD_T: tl.constexpr,
    UNIT_T: tl.constexpr,  # temperature 1: the cross-entropy reuses the scaled log-sum-exp
    REVERSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    zs_row = zs_ptr + row * stride_zs
    zt_row = zt_ptr + row * stride_zt
    dzs_row = dzs_ptr + row * stride_dzs
    dzt_row = dzt_ptr + row * stride_dzt
    offs = tl.arange(0, BLOCK)
    if HAS_LABEL:
        label = tl.load(y_ptr + row)
        keep = label != ignore_index
    else:
        label = 0
        keep = True
    if keep:
        m_s = tl.full([BLOCK], -1e30, tl.float32)
        d_s = tl.zeros([BLOCK], tl.float32)
        m_t = tl.full([BLOCK], -1e30, tl.float32)
        d_t = tl.zeros([BLOCK], tl.float32)
        m_z = tl.full([BLOCK], -1e30, tl.float32)
        d_z = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            mask = cols < n_cols
            z = tl.load(zs_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            t = tl.load(zt_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            m_s, d_s = online_logsumexp_step(z * inv_t, m_s, d_s)
            m_t, d_t = online_logsumexp_step(t * inv_t, m_t, d_t)
            if CE and not UNIT_T:
                m_z, d_z = online_logsumexp_step(z, m_z, d_z)
        lse_s = finish_logsumexp(m_s, d_s)
        lse_t = finish_logsumexp(m_t, d_t)
        if CE and not UNIT_T:
            lse_z = finish_logsumexp(m_z, d_z)
        else:
            lse_z = lse_s

        total = tl.zeros([BLOCK], tl.float32)
        sum_gx = tl.zeros([BLOCK], tl.float32)
        sum_gy = tl.zeros([BLOCK], tl.float32)
        n_blocks = tl.cdiv(n_cols, BLOCK)
        for i in range(0, n_blocks):
            if REVERSE:
                start = (n_blocks - 1 - i) * BLOCK
            else:
                start = i * BLOCK
            cols = start + offs
            mask = cols < n_cols
            x = tl.load(zs_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_s
            y = tl.load(zt_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_t
            loss, gx, gy = divergence_terms(x, y, beta, log_beta, log_1m_beta, 0.0, KIND)
            total += tl.where(mask, loss, 0.0)
            sum_gx += tl.where(mask, gx, 0.0)
            sum_gy += tl.where(mask, gy, 0.0)
        tl.store(soft_ptr + row, tl.sum(total, 0))
        if CE:
            tl.store(hard_ptr + row, lse_z - tl.load(zs_row + label).to(tl.float32))

        if GRAD_S or GRAD_T:
            s_x = tl.sum(sum_gx, 0)
            s_y = tl.sum(sum_gy, 0)
            scale = tl.load(scale_ptr + row * stride_scale)
            coef_soft = w_soft * inv_t * scale
            coef_hard = w_hard * scale
            for start in range(0, n_cols, BLOCK):
                cols = start + offs
                mask = cols < n_cols
                z = tl.load(zs_row + cols, mask=mask, other=0.0).to(tl.float32)
                x = z * inv_t - lse_s
                y = tl.load(zt_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_t
                _, gx, gy = divergence_terms(x, y, beta, log_beta, log_1m_beta, 0.0, KIND)
                if GRAD_S:
                    p = tl.exp(x)
                    if KIND == JSD_MIXTURE:  # gx = (1 - beta) p (x - log m): log m alone, one exp fewer
                        log_m, _, _, _ = log_mixture(x, y, log_beta, log_1m_beta)
                        g = coef_soft * p * ((1.0 - beta) * (x - log_m) - s_x)
                    else:
                        g = coef_soft * (gx - p * s_x)
                    if CE:
                        p_z = p if UNIT_T else tl.exp(z - lse_z)  # the unscaled softmax
                        g += coef_hard * (p_z - tl.where(cols == label, 1.0, 0.0))
                    store_rounded(dzs_row + cols, g, mask)
                if GRAD_T:
                    store_rounded(dzt_row + cols, coef_soft * (gy - tl.exp(y) * s_y), mask)
    else:
        tl.store(soft_ptr + row, 0.0)
        if CE:
            tl.store(hard_ptr + row, 0.0)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            mask = cols < n_cols
            if GRAD_S:
                store_rounded(dzs_row + cols, tl.zeros([BLOCK], tl.float32), mask)
            if GRAD_T:
                store_rounded(dzt_row + cols, tl.zeros([BLOCK], tl.float32), mask)


def jsd_logit_rows(
    student_logits, teacher_logits, beta, temperature=1.0, labels=None, ignore_index=-100, scale=None, grad_s=None,
    grad_t=None, weight_hard=0.0, weight_soft=1.0, ce=False,
):  # fmt: skip
    """Launch the kernel on ``[n, V]`` logits (unit column stride). Returns the fp32 ``[n]`` row
    divergences and, with ``ce``, the row cross-entropies (else None). ``labels`` [n] (required with
    ``ce``); ``scale``: an fp32 device tensor of 1 or n values (needed with a gradient); ``grad_s``,
    ``grad_t``: [n, V] gradient buffers or None (``grad_s`` may be ``student_logits``)."""
    n_rows, n_cols = student_logits.shape
    out = torch.empty(2 if ce else 1, n_rows, dtype=torch.float32, device=student_logits.device)
    if n_rows == 0 or n_cols == 0:
        return out[0].zero_(), out[1].zero_() if ce else None
    div = Divergence(jsd_kind(beta), beta)
    beta, log_beta, log_1m_beta, _ = div.scalars()
    block = min(BLOCK_COLS, next_power_of_2(n_cols))
    dummy = out
    grad = grad_s is not None or grad_t is not None
    _jsd_logit_rows_kernel[(n_rows,)](
        student_logits,
        student_logits.stride(0),
        teacher_logits,
        teacher_logits.stride(0),
        dummy if labels is None else labels,
        out[0],
        out[1] if ce else dummy,
        scale if grad else dummy,
        int(grad and scale.numel() > 1),
        dummy if grad_s is None else grad_s,
        0 if grad_s is None else grad_s.stride(0),
        dummy if grad_t is None else grad_t,
        0 if grad_t is None else grad_t.stride(0),
        n_cols,
        ignore_index,
        1.0 / temperature,
        beta,
        log_beta,
        log_1m_beta,
        float(weight_hard),
        float(weight_soft),
        KIND=div.kind,
        CE=bool(ce),
        HAS_LABEL=labels is not None,
        GRAD_S=grad_s is not None,
        GRAD_T=grad_t is not None,
        UNIT_T=temperature == 1,
        REVERSE=REVERSE_MIDDLE_PASS,
        BLOCK=block,
        num_warps=16 if block >= 4096 else 8 if block >= 1024 else 4,
    )
    return out[0], out[1] if ce else None


def jsd_distillation_rows(
    student_logits, teacher_logits, target, grad_out, scale, beta, temperature, ignore_index, weight_hard_loss,
    weight_soft_loss, compute_ce_loss,
):  # fmt: skip
    """The distillation's row op: summed ``(soft, hard)`` (fp32 0-dim) of logits ``[n, V]`` (module
    docstring), and ``scale * d(w_hard * hard + w_soft * soft) / dz`` into ``grad_out`` ([n, V],
    unit column stride; may be ``student_logits`` itself) unless it is None. ``scale``: an fp32
    device scalar (no sync)."""
    soft, hard = jsd_logit_rows(
        student_logits, teacher_logits, beta, temperature, target, ignore_index, scale.reshape(1), grad_out,
        None, weight_hard_loss, weight_soft_loss, ce=compute_ce_loss,
    )  # fmt: skip
    return soft.sum(), soft.new_zeros(()) if hard is None else hard.sum()
