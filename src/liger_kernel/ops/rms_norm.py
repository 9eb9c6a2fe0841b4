"""RMSNorm: ``y = x / sqrt(mean(x^2) + eps) * (offset + w)``, with the casting modes that
reproduce each model family's numerics. The kernels are LayerNorm's (``ops/norms.py``) with
the mean left out.
"""

import torch

from liger_kernel.ops.norms import CASTING_MODES, check_norm_inputs, norm_backward, norm_forward
from liger_kernel.ops.utils import LigerFunction, fallback_backward, fallback_forward
from liger_kernel.utils import use_triton


def casting_mode_name(casting_mode) -> str:
    """Validate ``casting_mode``: one of ``"llama"``, ``"gemma"``, ``"none"``."""
    if casting_mode not in CASTING_MODES:
        raise ValueError(f"`casting_mode` must be one of {sorted(CASTING_MODES)}, got {casting_mode!r}.")
    return casting_mode


def rms_norm_reference(X, W, eps, offset=0.0, casting_mode="llama"):
    """The spec, and the CPU fallback. X [..., H], W [H] or None; returns X's shape and dtype.

    - ``"llama"`` (Llama, Mistral, Qwen): normalize in fp32, round x_hat to X's dtype, then
      multiply by ``offset + W`` (in fp32) -- Hugging Face's ``LlamaRMSNorm``.
    - ``"gemma"``: everything in fp32, ``offset + W`` included, cast at the end -- ``GemmaRMSNorm``
      with ``offset=1``.
    - ``"none"``: every step in X's dtype (``offset + W`` formed in fp32, then rounded).

    With ``W=None`` there is no affine step (and ``offset`` is unused).
    """
    mode = casting_mode_name(casting_mode)
    if mode == "none":
        x_hat = X * torch.rsqrt(X.pow(2).mean(-1, keepdim=True) + eps)
        return x_hat if W is None else x_hat * (offset + W.to(torch.promote_types(W.dtype, torch.float32))).to(X.dtype)
    acc = torch.promote_types(X.dtype, torch.float32)  # fp32, or fp64 for a float64 spec run
    x = X.to(acc)
    x_hat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if W is None:
        return x_hat.to(X.dtype)
    w = offset + W.to(torch.promote_types(W.dtype, acc))
    if mode == "llama":
        x_hat = x_hat.to(X.dtype)
    return (x_hat * w).to(X.dtype)


class LigerRMSNormFunction(LigerFunction):
    """RMSNorm over the last dimension with a fused forward and backward.

    ``apply(X [..., H], W [H] or None, eps, offset=0.0, casting_mode="llama", in_place=True,
    row_mode=None) -> Y [..., H]`` in X's dtype. W may be X's dtype or fp32 (mixed precision).
    ``in_place`` writes dX into the incoming gradient's buffer (saves one X-sized tensor); safe
    unless that gradient is also read elsewhere, as when the norm's output feeds a residual add
    directly. ``row_mode`` is accepted for compatibility: the launch picks rows per program from
    the width itself. float64 X runs the PyTorch reference.
    """

    @staticmethod
    def forward(ctx, X, W, eps, offset=0.0, casting_mode="llama", in_place=True, row_mode=None):
        mode = casting_mode_name(casting_mode)
        check_norm_inputs(X, W)
        ctx.use_triton = use_triton(X) and X.dtype != torch.float64
        if not ctx.use_triton:
            return fallback_forward(ctx, rms_norm_reference, X, W, eps, offset, mode)
        Y, X2, stats = norm_forward(X, W, None, eps, offset, CASTING_MODES[mode], is_rms=True)
        ctx.save_for_backward(X2, W, stats)
        ctx.offset, ctx.casting, ctx.in_place, ctx.x_shape = offset, CASTING_MODES[mode], in_place, X.shape
        return Y

    @staticmethod
    def backward(ctx, dY):
        if not ctx.use_triton:
            return *fallback_backward(ctx, dY), None, None
        X2, W, stats = ctx.saved_tensors
        need_dw = W is not None and ctx.needs_input_grad[1]
        dX, dW, _ = norm_backward(dY, X2, W, None, stats, ctx.offset, ctx.casting, True, need_dw, False, ctx.in_place)
        return dX.view(ctx.x_shape), dW, None, None, None, None, None
