"""RMSNorm: ``y = x / sqrt(mean(x^2) + eps) * (offset + w)``, with the casting modes that
reproduce each model family's numerics. The kernels are LayerNorm's (``ops/norms.py``) with
the mean left out.
"""

import torch

from liger_kernel.ops.norms import (
    CASTING_MODES,
    dense,
    kernel_backward,
    kernel_forward,
    norm_backward,
    norm_forward,
    norm_plan,
)
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


def casting_mode_id(casting_mode) -> int:
    """The kernels' constant for ``casting_mode`` (a name, or the constant itself)."""
    if casting_mode in CASTING_MODES.values() and not isinstance(casting_mode, bool):
        return casting_mode
    return CASTING_MODES[casting_mode_name(casting_mode)]


class LigerRMSNormFunction(LigerFunction):
    """RMSNorm over the last dimension with a fused forward and backward.

    ``apply(X [..., H], W [H] or None, eps, offset=0.0, casting_mode="llama", in_place=True,
    row_mode=None, grad_output_unshared=False) -> Y [..., H]`` in X's dtype. W may be X's dtype
    or fp32 (mixed precision). float64 X runs the PyTorch reference.

    ``in_place`` (Liger's name and default) allows the backward to write dX into the incoming
    gradient's buffer, saving one X-sized tensor. That buffer is often read elsewhere too: in
    ``x + norm(x)`` the same gradient also flows to ``x``, in ``norm(a) + norm(b)`` to the other
    norm, and ``y.backward(g)`` hands over the caller's ``g``. So the write happens only when the
    caller also passes ``grad_output_unshared=True``, its word that nothing else reads that
    gradient, as at the pre-norm call sites the Hugging Face patch converts; otherwise dX gets
    its own buffer and ``in_place=True`` changes nothing. ``row_mode`` is accepted for
    compatibility: the launch picks rows per program from the width itself.
    """

    @staticmethod
    def forward(
        ctx, X, W, eps, offset=0.0, casting_mode="llama", in_place=True, row_mode=None, grad_output_unshared=False
    ):
        casting = CASTING_MODES[casting_mode_name(casting_mode)]
        plan = norm_plan(X, W, None, is_rms=True)
        if not use_triton(X) or X.dtype is torch.float64:
            ctx.plan = None
            return fallback_forward(ctx, rms_norm_reference, X, W, eps, offset, casting_mode)
        W, _ = dense(plan, W, None)
        Y, X_rows, stats = norm_forward(plan, X, W, None, eps, offset, casting)
        ctx.save_for_backward(X_rows, W, stats)
        ctx.plan, ctx.settings = plan, (offset, casting, in_place and grad_output_unshared)
        return Y

    @staticmethod
    def backward(ctx, dY):
        if ctx.plan is None:
            return *fallback_backward(ctx, dY), None, None, None
        X_rows, W, stats = ctx.saved_tensors
        offset, casting, reuse_dy = ctx.settings
        need_dw = W is not None and ctx.needs_input_grad[1]
        dX, dW, _ = norm_backward(ctx.plan, dY, X_rows, W, None, stats, offset, casting, need_dw, False, reuse_dy)
        return dX, dW, None, None, None, None, None, None


def rms_norm_forward(X, W, eps, offset, casting_mode, row_mode):
    """The forward kernel alone, without autograd: ``(Y, X, RSTD, BLOCK_SIZE, num_warps,
    casting_mode)``: Y in X's shape and dtype, then what ``rms_norm_backward`` takes besides
    ``dY``, ``W``, ``offset`` and the flags: X as [rows, H] (a view where one exists), RSTD the
    fp32 per-row 1/rms [rows], the forward's column block and warps, and the casting mode's name.

    These run the Triton kernels (on a GPU, or on a CPU under ``TRITON_INTERPRET=1``);
    ``LigerRMSNormFunction`` is the differentiable entry that also falls back to the reference.
    ``row_mode`` is accepted for compatibility (the launch picks rows per program itself)."""
    mode = casting_mode_name(casting_mode)
    Y, X2, stats, plan = kernel_forward(X, W, None, eps, offset, CASTING_MODES[mode], is_rms=True)
    return Y, X2, stats[0], plan.fwd_block_n, plan.fwd_warps, mode


def rms_norm_backward(dY, X, W, RSTD, offset, casting_mode, BLOCK_SIZE, num_warps, in_place, row_mode, needs_dw=None):
    """The backward kernel alone: ``(dX in dY's shape, dW in W's dtype or None)`` from what
    ``rms_norm_forward`` returned. ``needs_dw`` (None: whenever W is given) skips the weight
    gradient when False. ``in_place=True`` writes dX into dY's buffer (when dY is dense): here
    the caller holds dY and decides. ``BLOCK_SIZE``, ``num_warps`` and ``row_mode`` are accepted
    for compatibility: the launch settings come from the shape."""
    dX, dW, _ = kernel_backward(
        dY, X, W, None, offset, casting_mode_id(casting_mode), needs_dw, False, bool(in_place), RSTD=RSTD
    )
    return dX, dW
