"""Fused linear cross-entropy: ``cross_entropy(x @ W.T + b, y)`` without the ``[BT, V]`` logits.

The tokens are split into chunks whose logits ``[C, V]`` fit ``CHUNK_BUDGET_BYTES``. Per chunk:
``logits = x_c @ W.T (+ b)`` (cuBLAS), the cross-entropy kernel turns them into ``dlogits`` in
place (already divided by the mean normalizer, known up front from the labels), then
``grad_x_c = dlogits @ W`` into its slice of the input gradient, ``grad_W += dlogits.T @ x_c`` and
``grad_b += dlogits.sum(0)`` into preallocated buffers. Gradients are computed in the forward
and returned by the backward (scaled in place when the upstream gradient is not exactly 1).

Why a byte budget and not a fixed ``V / H`` rule: each chunk re-reads and re-writes the whole
``[V, H]`` weight gradient, so chunks should be as large as memory allows. At N=8192, H=4096,
V=128256 bf16 the default budget gives 4 chunks of 2048 tokens (525 MB of logits) where a
``V / H`` rule gives 31 chunks of 264 tokens and rewrites the 1 GB weight gradient 31 times.

``accum_dtype=None`` accumulates the weight and bias gradients in fp32 when the weight is bf16 or
fp16 (then casts once), in the weight's dtype otherwise. Each chunk's product is exact to fp32
inside cuBLAS, but a bf16 accumulator rounds once per chunk, so its error grows with the chunk
count. Measured (CPU emulation of the chunked sums) on a [8192, 128] gradient over 16384 tokens,
max error relative to the largest entry: 0.31% for one bf16 matmul (PyTorch's own), 1.1% over 5
bf16 chunks, 1.6% over 19 (V=256k at 16k tokens with the default budget), 4.4% over 62; fp32
accumulation stays at 0.31% for any count. That is what keeps bf16 training at a 256k vocabulary
on PyTorch's numerics; the cost is a transient fp32 weight gradient (2x the bf16 one) and an
estimated 15% more time in the weight-gradient matmul. ``accum_dtype=torch.bfloat16`` reproduces
Liger Kernel's default (the weight's dtype) and its memory: pass it when comparing with Liger at
its default.
Loss, log-sum-exp and softmax are fp32 whatever ``accum_dtype``.

``reduction="none"`` with gradients: per-token upstream gradients are only known in backward, so
the forward computes the loss alone and the backward recomputes each chunk's logits (4 matmuls
per chunk instead of 3).
"""

import torch

from liger_kernel.ops.cross_entropy import (
    CEOptions,
    RemembersGradMode,
    caller_grad_mode,
    ce_rows_launch,
    check_target,
    cross_entropy_core,
    label_stats,
    mark_extras_non_differentiable,
    one_grad_per_argument,
    raise_if_bad_labels,
    reduce_outputs,
    reference_forward,
    row_outputs,
    scale_by_upstream,
)
from liger_kernel.ops.utils import (
    cdiv,
    check_float,
    check_same_device,
    check_same_dtype,
    fallback_backward,
)
from liger_kernel.utils import use_triton

# Bytes of one chunk's logits (their gradient is written over them). Overridable at run time:
# ``liger_kernel.ops.fused_linear_cross_entropy.CHUNK_BUDGET_BYTES = ...``. Measured on H100 at
# N=8192, H=4096, V=128256 bf16 (bf16 accumulation; peak includes the 1.05 GB weight gradient):
# 448 MiB -> 5 chunks, 42.6 ms, 1473 MB; 576 MiB -> 4 chunks, 40.4 ms, 1567 MB; 1100 MiB ->
# 40.3 ms, 2068 MB. 576 MiB is the knee, and holds 2048 tokens of a 128k vocabulary in one chunk.
CHUNK_BUDGET_BYTES = 576 * 2**20

# Chunk rows are a multiple of this (tensor-core friendly shapes for the three matmuls).
CHUNK_ALIGN = 128


def chunk_rows(n_rows: int, n_cols: int, element_size: int) -> int:
    """Rows per chunk: as many as the budget allows, balanced so the chunks are near-equal."""
    limit = max(1, CHUNK_BUDGET_BYTES // max(1, n_cols * element_size))
    if limit >= CHUNK_ALIGN:
        limit -= limit % CHUNK_ALIGN
    n_chunks = cdiv(max(n_rows, 1), limit)
    rows = cdiv(max(n_rows, 1), n_chunks)
    if limit >= CHUNK_ALIGN:
        rows = min(cdiv(rows, CHUNK_ALIGN) * CHUNK_ALIGN, limit, max(n_rows, 1))
    return rows


_OUT_DTYPE_MM = {"ok": None}  # whether torch.mm/addmm take out_dtype here (CUDA, torch >= 2.8)


def default_accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for half-precision weights (see the module docstring), else their dtype."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def accumulate_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """``out = a @ b`` (``first``) or ``out += a @ b``, with ``out`` possibly wider than ``a``, ``b``
    (bf16 products accumulated in fp32 without an fp32 copy of the operands where cuBLAS can)."""
    if out.dtype == a.dtype:
        if first:
            torch.mm(a, b, out=out)
        else:
            out.addmm_(a, b)
        return
    if out.is_cuda and _OUT_DTYPE_MM["ok"] is not False:
        try:
            if first:
                torch.mm(a, b, out_dtype=out.dtype, out=out)
            else:
                torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
            _OUT_DTYPE_MM["ok"] = True
            return
        except (TypeError, RuntimeError):
            _OUT_DTYPE_MM["ok"] = False
    if first:
        torch.mm(a.to(out.dtype), b.to(out.dtype), out=out)
    else:
        out.addmm_(a.to(out.dtype), b.to(out.dtype))


def flce_chunks(x, weight, target, bias, ce_weight, opts: CEOptions, needs=(False, False, False), row_scale=None):
    """The chunk loop. ``x`` [N, H] contiguous, ``target`` N labels of any shape. ``needs`` says
    which of the input, weight and bias gradients to compute; ``row_scale`` [N] multiplies each
    token's gradient (the upstream gradient of ``reduction="none"``). Returns the 4-tuple and the
    3 gradients."""
    n_rows, hidden = x.shape
    n_cols = weight.shape[0]
    y = target.reshape(-1)
    w, mask, norm, wsum = label_stats(y, ce_weight, opts.ignore_index, n_cols)
    loss_rows, z_rows, pred, bad = row_outputs(n_rows, x, opts)
    need_x, need_w, need_b = needs
    need_b = need_b and bias is not None
    grad_dtype = opts.accum_dtype or default_accum_dtype(weight.dtype)
    grad_x = torch.empty_like(x) if need_x else None
    grad_w = torch.empty(weight.shape, dtype=grad_dtype, device=x.device) if need_w else None
    grad_b = torch.empty(n_cols, dtype=grad_dtype, device=x.device) if need_b else None
    write_grad = need_x or need_w or need_b

    rows = chunk_rows(n_rows, n_cols, x.element_size())
    logits_buf = torch.empty(rows, n_cols, dtype=x.dtype, device=x.device)
    w_t = weight.t()
    for start in range(0, n_rows, rows):
        end = min(start + rows, n_rows)
        x_c = x[start:end]
        logits = logits_buf[: end - start]
        if bias is None:
            torch.mm(x_c, w_t, out=logits)
        else:
            torch.addmm(bias, x_c, w_t, out=logits)
        ce_rows_launch(
            logits,
            y[start:end],
            w,
            norm,
            wsum,
            loss_rows[start:end],
            None if z_rows is None else z_rows[start:end],
            None if pred is None else pred[start:end],
            bad,
            opts,
            write_grad,
            row_scale=None if row_scale is None else row_scale[start:end],
        )
        if need_x:
            torch.mm(logits, weight, out=grad_x[start:end])
        if need_w:
            accumulate_mm(grad_w, logits.t(), x_c, first=start == 0)
        if need_b:
            if start == 0:
                torch.sum(logits, 0, dtype=grad_dtype, out=grad_b)
            else:
                grad_b += logits.sum(0, dtype=grad_dtype)
    del logits_buf
    if n_rows == 0:  # no chunk ran: the gradients are zero
        for g in (grad_x, grad_w, grad_b):
            if g is not None:
                g.zero_()
    # Back to the parameters' dtypes once, after the chunk buffer is freed (lower peak).
    if grad_w is not None and grad_w.dtype != weight.dtype:
        grad_w = grad_w.to(weight.dtype)
    if grad_b is not None and grad_b.dtype != bias.dtype:
        grad_b = grad_b.to(bias.dtype)
    raise_if_bad_labels(bad, n_cols, opts.ignore_index)
    outputs = reduce_outputs(loss_rows, z_rows, pred, y, mask, norm, opts, target.shape)
    return outputs, (grad_x, grad_w, grad_b)


def fused_linear_cross_entropy_reference(
    _input,
    weight,
    target,
    bias=None,
    ce_weight=None,
    ignore_index=-100,
    lse_square_scale=0.0,
    label_smoothing=0.0,
    reduction="mean",
    softcap=None,
    return_z_loss=False,
    accum_dtype=None,
    use_token_scaling=False,
    return_token_accuracy=False,
    return_predicted_tokens=False,
):
    """The spec and the CPU fallback: the logits ``_input @ weight.T + bias`` in the input dtype
    (as a Hugging Face ``lm_head`` computes them), then the cross-entropy of
    ``ops/cross_entropy.py`` on them upcast to fp32. ``accum_dtype`` only affects the kernels."""
    opts = CEOptions(
        ignore_index,
        lse_square_scale,
        label_smoothing,
        reduction,
        softcap,
        return_z_loss,
        return_token_accuracy,
        return_predicted_tokens,
        use_token_scaling,
        accum_dtype,
    )
    return fused_linear_cross_entropy_core(_input, weight, target, bias, ce_weight, opts)


def fused_linear_cross_entropy_core(_input, weight, target, bias, ce_weight, opts: CEOptions):
    """The reference's math with the options as one record."""
    return cross_entropy_core(torch.nn.functional.linear(_input, weight, bias), target, ce_weight, opts)


def check_flce_inputs(_input, weight, target, bias, ce_weight, accum_dtype):
    check_float("_input", _input)
    check_float("weight", weight)
    if bias is not None:
        check_float("bias", bias)
    check_same_dtype(_input=_input, weight=weight, bias=bias)
    if weight.dim() != 2 or _input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"`weight` must be [V, H] with H = _input.shape[-1] = {_input.shape[-1]}; got {tuple(weight.shape)}."
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"`bias` must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if accum_dtype is not None and accum_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(
            f"`accum_dtype` must be None, torch.float32, torch.bfloat16 or torch.float16; got {accum_dtype}."
        )
    n_rows = _input.numel() // max(_input.shape[-1], 1)
    check_target(target, n_rows, ce_weight, weight.shape[0], {"_input": _input, "weight": weight, "bias": bias})
    check_same_device(_input=_input, weight=weight)


class LigerFusedLinearCrossEntropyFunction(RemembersGradMode):
    """Cross-entropy of ``_input [BT, H] @ weight[V, H].T + bias`` against ``target [BT]`` without
    materializing the logits; options as ``LigerCrossEntropyFunction`` plus ``bias``,
    ``accum_dtype`` (dtype of the weight and bias gradient accumulation; None: fp32 for bf16/fp16
    weights, see the module docstring)
    and ``use_token_scaling`` (each token's loss and gradient times its detached ``p[y]``).
    Returns ``(loss, z_loss, token_accuracy, predicted_tokens)``; only ``loss`` is differentiable.
    Under ``torch.no_grad()``, or when no tensor input needs a gradient, only the loss is computed.
    """

    @staticmethod
    def forward(
        ctx,
        _input,
        weight,
        target,
        bias=None,
        ce_weight=None,
        ignore_index=-100,
        lse_square_scale=0.0,
        label_smoothing=0.0,
        reduction="mean",
        softcap=None,
        return_z_loss=False,
        accum_dtype=None,
        use_token_scaling=False,
        return_token_accuracy=False,
        return_predicted_tokens=False,
    ):
        check_flce_inputs(_input, weight, target, bias, ce_weight, accum_dtype)
        opts = CEOptions(
            ignore_index,
            lse_square_scale,
            label_smoothing,
            reduction,
            softcap,
            return_z_loss,
            return_token_accuracy,
            return_predicted_tokens,
            use_token_scaling,
            accum_dtype,
        ).check()
        grad_on = caller_grad_mode.enabled
        needs = tuple(grad_on and ctx.needs_input_grad[i] for i in (0, 1, 3))
        ctx.use_triton = use_triton(_input) and _input.dtype != torch.float64
        if not ctx.use_triton:
            args = (_input, weight, target, bias, ce_weight, opts)
            return reference_forward(ctx, fused_linear_cross_entropy_core, any(needs), *args)

        x = _input.reshape(-1, _input.shape[-1]).contiguous()
        tensors = (x, weight.contiguous(), target, None if bias is None else bias.contiguous())
        ctx.input_shape = _input.shape
        ctx.recompute = reduction == "none" and any(needs)
        if ctx.recompute:
            outputs, _ = flce_chunks(*tensors, ce_weight, opts)
            ctx.ce_weight, ctx.opts, ctx.needs = ce_weight, opts, needs
            ctx.save_for_backward(*tensors)
        else:
            outputs, grads = flce_chunks(*tensors, ce_weight, opts, needs=needs)
            ctx.save_for_backward(*grads)
        return mark_extras_non_differentiable(ctx, outputs)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if not ctx.use_triton:
            return one_grad_per_argument(fallback_backward(ctx, grad_loss, None, None, None), 15)
        if ctx.recompute:
            row_scale = grad_loss.reshape(-1).to(torch.float32)
            _, grads = flce_chunks(*ctx.saved_tensors, ctx.ce_weight, ctx.opts, needs=ctx.needs, row_scale=row_scale)
        else:
            grads = ctx.saved_tensors
            for g in grads:
                if g is not None:
                    scale_by_upstream(g, grad_loss, per_row=False)
        grad_x, grad_w, grad_b = grads
        if grad_x is not None:
            grad_x = grad_x.view(ctx.input_shape)
        return one_grad_per_argument((grad_x, grad_w, None, grad_b), 15)
