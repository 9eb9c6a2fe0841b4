"""What the divergence losses share: the per-element math of KL, JSD and TVD as Triton helpers,
one row kernel that applies it to two ``[R, C]`` tensors, the label mask and reduction factor,
and the student/teacher token-chunk loop of the fused-head forms.

Per element, with ``x`` the prediction and ``y`` the target (``divergence_terms``)::

    KL_PROB       y (log max(y, eps) - x)                x log-probs, y probabilities (F.kl_div)
    KL_LOG        e^y (y - x)                            both log-probs (log_target=True): KL(P||Q)
    KL_LOG_REV    e^x (x - y)                            both log-probs: KL(Q||P)
    JSD_MIXTURE   b e^y (y - log m) + (1 - b) e^x (x - log m),   m = b e^y + (1 - b) e^x
    TVD           |x - y| / 2                            both probabilities

with their exact derivatives in ``x`` and ``y`` (``d|u|/du`` is 0 at 0, as PyTorch's). The row
kernel computes in fp32 whatever the inputs' dtypes; its row sums are fp32.

The fused-head losses (``fused_linear_jsd``, ``fused_linear_kl_div``) run ``head_chunks``: per
chunk of tokens, fp32 logits ``x_c @ W.T`` of every head (student, teacher), a row kernel that
turns them into the per-row loss and ``dloss/dlogits`` in the matmul dtype, then
``grad_x[chunk] = dlogits @ W`` (fp32) and ``grad_W += dlogits.T @ x_c`` into an fp32 accumulator
(or ``accum_dtype``): each gradient is one fp32 sum rounded once, for 6NHV flops of the trained
head plus 2NHV of a frozen one. No ``[N, V]`` logits: one chunk of ``CHUNK_BUDGET_BYTES``.
"""

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from liger_kernel.ops.cross_entropy import finish_logsumexp, online_logsumexp_step, scale_by_upstream
from liger_kernel.ops.fused_linear_cross_entropy import _round_to_bf16, accumulate_mm, flat_view, mm_fp32, split_size
from liger_kernel.ops.utils import (
    as_rows,
    check_float,
    check_same_device,
    empty_output,
    fallback_forward,
    next_power_of_2,
)
from liger_kernel.utils import use_triton

KL_PROB = tl.constexpr(0)
KL_LOG = tl.constexpr(1)
KL_LOG_REV = tl.constexpr(2)
JSD_MIXTURE = tl.constexpr(3)
TVD = tl.constexpr(4)

# Column block of the row kernels (fp32 math on 2 inputs and up to 2 gradients per element); read
# at each launch (the tests narrow it to run the multi-block loops on small rows).
MAX_BLOCK = 4096
# Token-chunk budget of the fused-head losses: fp32 logits of every head plus the dlogits of the
# trained ones. 512 MiB is 2 x 4 + 2 bytes over 128256 columns x 384 rows (22 chunks at 8192
# tokens): beside the 2 GiB fp32 weight-gradient accumulator of a 128256 x 4096 head, the peak
# stays under Liger Kernel 0.8.5's 3.06 GB for its fused linear JSD at that shape.
CHUNK_BUDGET_BYTES = 512 * 2**20
# The fp32 weight-gradient accumulator is kept in vocabulary blocks of this many bytes, rounded to
# the weight's dtype and freed one at a time: the rounding then needs 1/8 of the bf16 gradient
# beside the fp32 one (2.2 GB at 128256 x 4096), not all of it (3.2 GB).
W_BLOCK_BYTES = 256 * 2**20
REDUCTIONS = ("none", "sum", "mean", "batchmean")


@triton.jit
def log_mixture(x, y, log_beta, log_1m_beta):
    """``(log m, top, r, y_top)``: ``log m = log(beta e^y + (1 - beta) e^x)`` as ``top + log(1 + r)``,
    ``top`` the larger of the two log-terms (``y_top``: the target's), ``r = e^(smaller - top)``:
    two exp/log, finite wherever x and y are."""
    a = y + log_beta
    b = x + log_1m_beta
    top = tl.maximum(a, b)
    r = tl.exp(-tl.abs(a - b))
    return top + tl.log(1.0 + r), top, r, a >= b


@triton.jit
def divergence_terms(x, y, beta, log_beta, log_1m_beta, eps, KIND: tl.constexpr):
    """``(loss, dloss/dx, dloss/dy)`` of one element, fp32 (the table of the module docstring)."""
    if KIND == KL_PROB:
        log_y = tl.log(tl.maximum(y, eps))
        loss = y * (log_y - x)
        gx = -y
        gy = log_y - x + tl.where(y >= eps, 1.0, 0.0)
    elif KIND == KL_LOG:
        p = tl.exp(y)
        loss = p * (y - x)
        gx = -p
        gy = loss + p
    elif KIND == KL_LOG_REV:
        q = tl.exp(x)
        loss = q * (x - y)
        gx = loss + q
        gy = -q
    elif KIND == JSD_MIXTURE:
        log_m, top, r, y_top = log_mixture(x, y, log_beta, log_1m_beta)
        e_top = tl.exp(top)  # three exp/log per element in all, not five
        gx = tl.where(y_top, e_top * r, e_top) * (x - log_m)  # (1 - beta) q (x - log m); d log m terms cancel
        gy = tl.where(y_top, e_top, e_top * r) * (y - log_m)
        loss = gx + gy
    else:
        diff = x - y
        loss = 0.5 * tl.abs(diff)
        gx = tl.where(diff > 0, 0.5, tl.where(diff < 0, -0.5, 0.0))
        gy = -gx
    return loss, gx, gy


@triton.jit
def divergence_rows_kernel(
    x_ptr,  # [R, C] prediction, unit column stride
    stride_x,
    y_ptr,  # [R, C] target
    stride_y,
    label_ptr,  # [R] labels (HAS_LABEL): rows at ignore_index count 0
    out_ptr,  # FORWARD: [R] fp32 row sums, or [R, C] per element (ELEMENTWISE)
    stride_out,
    g_ptr,  # upstream gradient: [1] fp32 already times the reduction factor, or [R, C] (ELEMENTWISE)
    stride_g,
    gx_ptr,  # [R, C] out: dloss/dx (GRAD_X)
    stride_gx,
    gy_ptr,  # [R, C] out: dloss/dy (GRAD_Y)
    stride_gy,
    n_cols,
    ignore_index,
    beta,
    log_beta,
    log_1m_beta,
    eps,
    KIND: tl.constexpr,
    HAS_LABEL: tl.constexpr,
    FORWARD: tl.constexpr,
    ELEMENTWISE: tl.constexpr,
    GRAD_X: tl.constexpr,
    GRAD_Y: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row, one pass: the loss (row sum or per element) and/or the gradients."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    keep = row >= 0  # all rows count (a tensor, as with labels)
    if HAS_LABEL:
        keep = tl.load(label_ptr + row) != ignore_index
    if (GRAD_X or GRAD_Y) and not ELEMENTWISE:
        g_row = tl.where(keep, tl.load(g_ptr), 0.0)
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        mask = cols < n_cols
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
        loss, gx, gy = divergence_terms(x, y, beta, log_beta, log_1m_beta, eps, KIND)
        loss = tl.where(mask & keep, loss, 0.0)
        if FORWARD:
            if ELEMENTWISE:
                tl.store(out_ptr + row * stride_out + cols, loss.to(out_ptr.dtype.element_ty), mask=mask)
            else:
                total += loss
        if GRAD_X or GRAD_Y:
            if ELEMENTWISE:
                g = tl.where(keep, tl.load(g_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32), 0.0)
            else:
                g = g_row
            if GRAD_X:
                tl.store(gx_ptr + row * stride_gx + cols, (gx * g).to(gx_ptr.dtype.element_ty), mask=mask)
            if GRAD_Y:
                tl.store(gy_ptr + row * stride_gy + cols, (gy * g).to(gy_ptr.dtype.element_ty), mask=mask)
    if FORWARD and not ELEMENTWISE:
        tl.store(out_ptr + row, tl.sum(total, 0))


class Divergence(NamedTuple):
    """Which divergence and its constants, as the kernels take them."""

    kind: int
    beta: float = 0.5
    eps: float = 1e-10

    def scalars(self):
        """``(beta, log beta, log(1 - beta), eps)`` (the logs finite only where used)."""
        inner = 0.0 < self.beta < 1.0
        return (
            float(self.beta),
            math.log(self.beta) if inner else 0.0,
            math.log1p(-self.beta) if inner else 0.0,
            float(self.eps),
        )


def jsd_kind(beta: float) -> int:
    """The generalized JSD's kernel kind: beta 0 is KL(P||Q) (P the target), 1 is KL(Q||P)."""
    return KL_LOG.value if beta == 0 else KL_LOG_REV.value if beta == 1 else JSD_MIXTURE.value


def rows_loss(x2, y2, div: Divergence, reduction, divisor, out_dtype, shape, labels=None, ignore_index=-100):
    """The loss of ``rows_launch``'s divergence: per element, in ``shape``, for ``none``; else the
    rows' fp32 sum over ``divisor`` (1 for ``sum``), cast once to ``out_dtype``."""
    if reduction == "none":
        out = empty_output(x2.shape, x2, dtype=out_dtype)
        rows_launch(x2, y2, div, labels, ignore_index, out=out)
        return out.view(shape)
    rows = torch.empty(x2.shape[0], dtype=torch.float32, device=x2.device)
    rows_launch(x2, y2, div, labels, ignore_index, out=rows)
    return (rows.sum() / divisor).to(out_dtype)


def scaled_upstream(grad_output, x2, reduction, divisor):
    """``rows_launch``'s ``g`` for ``rows_loss``'s upstream gradient: per element for ``none``, else
    [1] fp32 over ``divisor``."""
    if reduction == "none":
        return as_rows(grad_output.reshape(x2.shape))
    return (grad_output.to(torch.float32) / divisor).reshape(1)


def rows_grads(x2, y2, div: Divergence, g, need_x, need_y, shape, labels=None, ignore_index=-100):
    """``(grad x, grad y)`` of ``rows_launch``'s divergence for the upstream ``g``, in ``shape`` and
    the inputs' dtypes, None where not needed (one pass over both)."""
    gx = empty_output(x2.shape, x2) if need_x else None
    gy = empty_output(y2.shape, y2) if need_y else None
    rows_launch(x2, y2, div, labels, ignore_index, g=g, gx=gx, gy=gy)
    return tuple(None if t is None else t.view(shape) for t in (gx, gy))


def rows_launch(x2, y2, div: Divergence, labels=None, ignore_index=-100, out=None, g=None, gx=None, gy=None):
    """Launch ``divergence_rows_kernel`` on ``x2``, ``y2`` [R, C] (unit column stride). ``out``:
    [R] fp32 row sums or [R, C] per element (the forward); ``g``: [1] fp32 scaled upstream
    gradient, or [R, C] per element; ``gx``, ``gy``: [R, C] gradient outputs."""
    n_rows, n_cols = x2.shape
    if n_rows == 0 or n_cols == 0:
        return
    elementwise = (out is not None and out.dim() == 2) or (g is not None and g.dim() == 2)
    block = min(MAX_BLOCK, next_power_of_2(n_cols))
    dummy = x2
    divergence_rows_kernel[(n_rows,)](
        x2,
        x2.stride(0),
        y2,
        y2.stride(0),
        dummy if labels is None else labels,
        dummy if out is None else out,
        out.stride(0) if out is not None and out.dim() == 2 else 0,
        dummy if g is None else g,
        g.stride(0) if g is not None and g.dim() == 2 else 0,
        dummy if gx is None else gx,
        0 if gx is None else gx.stride(0),
        dummy if gy is None else gy,
        0 if gy is None else gy.stride(0),
        n_cols,
        ignore_index,
        *div.scalars(),
        KIND=div.kind,
        HAS_LABEL=labels is not None,
        FORWARD=out is not None,
        ELEMENTWISE=elementwise,
        GRAD_X=gx is not None,
        GRAD_Y=gy is not None,
        BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )


# ----------------------------------------------------------------------------- labels and reductions


def check_labels(shift_labels, n_rows: int, device_of: dict) -> torch.Tensor | None:
    """``shift_labels`` flattened to [R] (None stays None); an error naming it when it does not fit."""
    if shift_labels is None:
        return None
    if not isinstance(shift_labels, torch.Tensor) or shift_labels.is_floating_point() or shift_labels.is_complex():
        raise TypeError("`shift_labels` must be an integer tensor of labels (e.g. torch.long) or None.")
    if shift_labels.numel() != n_rows:
        raise ValueError(
            f"`shift_labels` has {shift_labels.numel()} labels but the inputs have {n_rows} rows: one label per row."
        )
    check_same_device(**device_of, shift_labels=shift_labels)
    return shift_labels.reshape(-1).contiguous()


def check_reduction(reduction: str, allowed=REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(f"`reduction` must be one of {allowed}, got {reduction!r}.")
    return reduction


def check_pair(first: str, a, second: str, b) -> None:
    """Two float tensors of one shape on one device (dtypes may differ)."""
    check_float(first, a)
    check_float(second, b)
    if a.shape != b.shape:
        raise ValueError(f"`{first}` has shape {tuple(a.shape)} but `{second}` has {tuple(b.shape)}: they must match.")
    check_same_device(**{first: a, second: b})


def valid_rows(labels, ignore_index: int, n_rows: int, device):
    """``(mask, count)``: rows that count (all when ``labels`` is None; None then) and their number,
    an fp32 device tensor (no sync)."""
    if labels is None:
        return None, torch.tensor(float(n_rows), device=device)
    mask = labels != ignore_index
    return mask, mask.sum(dtype=torch.float32)


def reduction_divisor(reduction: str, rows, n_cols: int):
    """What the summed loss is divided by: 1 (none/sum), rows x columns (mean) or rows (batchmean),
    never 0 (an all-ignored or empty batch gives 0, not NaN). ``rows``: an fp32 device tensor."""
    if reduction in ("none", "sum"):
        return torch.ones_like(rows)
    count = rows * n_cols if reduction == "mean" else rows
    return torch.where(count > 0, count, 1.0)


def masked_rows(values, mask):
    """``values`` with the ignored rows zeroed (the reference's masking)."""
    if mask is None:
        return values
    mask = mask.reshape(mask.shape + (1,) * (values.dim() - 1))
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


# ----------------------------------------------------------------------------- the token-chunk loop


class Head(NamedTuple):
    """One linear head of a fused-head loss: ``x`` [N, H] contiguous, ``weight`` [V, H], and which
    gradients it needs."""

    x: torch.Tensor
    weight: torch.Tensor
    need_x: bool = False
    need_w: bool = False

    @property
    def trained(self) -> bool:
        return self.need_x or self.need_w


def head_chunks(heads, run_rows, accum_dtype=None, budget=None):
    """The token-chunk loop of the module docstring. ``run_rows(start, end, logits, dlogits)`` gets
    each head's fp32 ``[n, V]`` logits of tokens ``start:end`` and, for each head that needs a
    gradient, an ``[n, V]`` buffer in its matmul dtype to write ``dloss/dlogits`` into (None
    otherwise). Returns ``(grad_x, grad_w)``, one entry per head: the fp32 input gradient, and the
    weight gradient in ``accum_dtype`` (None: fp32) as a list of vocabulary blocks (see
    ``rounded``), or None where the head does not need it. ``budget``: bytes of one chunk's buffers
    (None: ``CHUNK_BUDGET_BYTES``)."""
    n_rows = heads[0].x.shape[0]
    n_vocab = heads[0].weight.shape[0]
    device = heads[0].x.device
    per_logit = sum(4 + (h.x.element_size() if h.trained else 0) for h in heads)
    rows = split_size(n_rows, n_vocab * per_logit, budget or CHUNK_BUDGET_BYTES)
    logit_bufs = [torch.empty(rows * n_vocab, dtype=torch.float32, device=device) for _ in heads]
    grad_bufs = [torch.empty(rows * n_vocab, dtype=h.x.dtype, device=device) if h.trained else None for h in heads]
    # Every chunk writes its rows of grad_x, and the first one sets grad_w: no zero fill unless there are no rows.
    new = torch.zeros if n_rows == 0 else torch.empty
    grad_x = [new(h.x.shape, dtype=torch.float32, device=device) if h.need_x else None for h in heads]
    accum = accum_dtype or torch.float32
    spans = [vocab_blocks(n_vocab, h.weight.shape[1]) for h in heads]
    grad_w = [
        [new(hi - lo, h.weight.shape[1], dtype=accum, device=device) for lo, hi in span] if h.need_w else None
        for h, span in zip(heads, spans)
    ]
    for start in range(0, n_rows, rows):
        end = min(start + rows, n_rows)
        logits = []
        for head, buf in zip(heads, logit_bufs):
            z = flat_view(buf, end - start, n_vocab)
            mm_fp32(head.x[start:end], head.weight.t(), z)
            logits.append(z)
        dlogits = [None if buf is None else flat_view(buf, end - start, n_vocab) for buf in grad_bufs]
        run_rows(start, end, logits, dlogits)
        for i, head in enumerate(heads):
            if head.need_x:
                mm_fp32(dlogits[i], head.weight, grad_x[i][start:end])
            if head.need_w:
                for (lo, hi), block in zip(spans[i], grad_w[i]):
                    accumulate_mm(block, dlogits[i][:, lo:hi].t(), head.x[start:end], first=start == 0)
    return grad_x, grad_w


def vocab_blocks(n_vocab: int, hidden: int):
    """``[(lo, hi)]``: the vocabulary rows of each block of the fp32 weight-gradient accumulator."""
    size = split_size(n_vocab, hidden * 4, W_BLOCK_BYTES)
    return [(lo, min(lo + size, n_vocab)) for lo in range(0, n_vocab, size)]


def rounded(grad, dtype, shape, grad_output=None):
    """A stored gradient, a tensor or a list of row blocks (emptied as it goes, so each fp32 block
    is freed once rounded), times the scalar ``grad_output`` when given (no work where it is exactly
    1), rounded once to ``dtype`` and viewed as ``shape``."""
    blocks = grad if isinstance(grad, list) else [grad]
    parts = []
    while blocks:
        block = blocks.pop(0)
        if grad_output is not None:
            scale_by_upstream(block.view(-1, block.shape[-1]), grad_output, per_row=False)
        parts.append(block.to(dtype))
        del block
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).view(shape)


def check_head(name_x: str, x, name_w: str, weight) -> None:
    check_float(name_x, x)
    check_float(name_w, weight)
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"`{name_w}` must be [V, H] with H = {name_x}.shape[-1] = {x.shape[-1]}; got {tuple(weight.shape)}."
        )
    if x.dtype != weight.dtype:
        raise TypeError(f"`{name_x}` is {x.dtype} but `{name_w}` is {weight.dtype}: cast them to one dtype.")
    check_same_device(**{name_x: x, name_w: weight})


def check_accum_dtype(accum_dtype) -> None:
    if accum_dtype is not None and accum_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(
            f"`accum_dtype` must be None, torch.float32, torch.bfloat16 or torch.float16; got {accum_dtype}."
        )


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"`temperature` must be a number > 0, got {temperature!r}.")
    return float(temperature)


def as_flat_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` [..., H] as a contiguous [N, H]."""
    return t.reshape(-1, t.shape[-1]).contiguous()


# ----------------------------------------------------------------------------- fused-head row helpers


@triton.jit
def row_logsumexp(z_row, n_cols, inv_temp, BLOCK: tl.constexpr):
    """Log-sum-exp of one logit row (any float dtype, in fp32) times ``inv_temp`` (online, one exp per element)."""
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -1e30, tl.float32)
    d = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        z = tl.load(z_row + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32) * inv_temp
        m, d = online_logsumexp_step(z, m, d)
    return finish_logsumexp(m, d)


@triton.jit
def store_rounded(ptr, value, mask):
    """``value`` (fp32) stored in ``ptr``'s dtype, rounded to nearest (bf16: see ``_round_to_bf16``)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        value = _round_to_bf16(value)
    tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


def logits_rows_launch(kernel, n_rows: int, n_cols: int, *args, **constexprs) -> None:
    """Launch a fused-head row kernel on ``n_rows`` rows of ``n_cols`` logits."""
    if n_rows == 0 or n_cols == 0:
        return
    block = min(MAX_BLOCK, next_power_of_2(n_cols))
    kernel[(n_rows,)](*args, BLOCK=block, num_warps=16 if block >= 4096 else 8 if block >= 1024 else 4, **constexprs)


def scaled_grads(grads, like, grad_output):
    """Each stored gradient (see ``rounded``) times the scalar upstream gradient, rounded once to its
    argument's ``(dtype, shape)`` in ``like``; ``grads`` is emptied, so the buffers go as they are used."""
    out = []
    for i, (dtype, shape) in enumerate(like):
        grad, grads[i] = grads[i], None
        out.append(None if grad is None else rounded(grad, dtype, shape, grad_output))
    return tuple(out)


def scale_in_place(grad_output, *grads):
    """The peer's low-level backward helpers: each gradient times the scalar ``grad_output``, in
    place (no work, and no sync, where it is exactly 1); returns them."""
    for grad in grads:
        if grad is None:
            continue
        if use_triton(grad):
            scale_by_upstream(grad.view(-1, grad.shape[-1]), grad_output, per_row=False)
        else:
            grad.mul_(grad_output)
    return grads


def student_grads(function, student_input, student_weight, *args):
    """The peer's low-level forwards: ``function.apply(student_input, student_weight, *args)`` and
    its gradients in the student's input and weight for an upstream gradient of 1 (per output
    element), without autograd outside: ``(loss, grad_input, grad_weight)``."""
    x = student_input.detach().requires_grad_()
    w = student_weight.detach().requires_grad_()
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    with torch.enable_grad():
        loss = function.apply(x, w, *args)
        grad_x, grad_w = torch.autograd.grad(loss, (x, w), torch.ones_like(loss))
    return loss.detach(), grad_x, grad_w


# ----------------------------------------------------------------------------- the reference path


def reference_outputs(ctx, reference, need_grad: bool, *args):
    """An autograd Function's forward through its PyTorch reference: differentiable (through
    ``fallback_backward``) when ``need_grad``, else computed under ``torch.no_grad()``."""
    if not need_grad:
        ctx.fallback = None
        with torch.no_grad():
            return reference(*args)
    return fallback_forward(ctx, reference, *args)


def check_has_label(has_label, shift_labels) -> None:
    """The peer's low-level helpers take both; they must agree."""
    if bool(has_label) != (shift_labels is not None):
        given = "given" if shift_labels is not None else "None"
        raise ValueError(f"`has_label` is {has_label} but `shift_labels` is {given}: pass labels exactly when True.")
