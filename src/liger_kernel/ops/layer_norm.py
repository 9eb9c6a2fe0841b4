"""LayerNorm: ``y = (x - mean(x)) / sqrt(var(x) + eps) * w + b`` over the last dimension,
computed in fp32 and cast to X's dtype. The kernels are shared with RMSNorm (``ops/norms.py``).
"""

import torch
import torch.nn.functional as F

from liger_kernel.ops.norms import GEMMA, dense, kernel_backward, kernel_forward, norm_backward, norm_forward, norm_plan
from liger_kernel.ops.utils import LigerFunction, fallback_backward, fallback_forward
from liger_kernel.utils import use_triton


def layer_norm_reference(X, W, B, eps):
    """The spec, and the CPU fallback: ``F.layer_norm`` in fp32 (as PyTorch computes it for half
    inputs too), cast to X's dtype. X [..., H]; W, B [H] or None."""
    acc = torch.promote_types(X.dtype, torch.float32)
    W = None if W is None else W.to(torch.promote_types(W.dtype, acc))
    B = None if B is None else B.to(torch.promote_types(B.dtype, acc))
    return F.layer_norm(X.to(acc), X.shape[-1:], W, B, eps).to(X.dtype)


class LigerLayerNormFunction(LigerFunction):
    """LayerNorm over the last dimension with a fused forward and backward.

    ``apply(X [..., H], W [H], B [H] or None, eps) -> Y [..., H]`` in X's dtype. W and B may be
    X's dtype or fp32 (mixed precision); W may also be None. float64 X runs the PyTorch reference.
    """

    @staticmethod
    def forward(ctx, X, W, B, eps):
        plan = norm_plan(X, W, B, is_rms=False)
        if not use_triton(X) or X.dtype is torch.float64:
            ctx.plan = None
            return fallback_forward(ctx, layer_norm_reference, X, W, B, eps)
        W, B = dense(plan, W, B)
        Y, X_rows, stats = norm_forward(plan, X, W, B, eps, 0.0, GEMMA)
        ctx.save_for_backward(X_rows, W, B, stats)
        ctx.plan = plan
        return Y

    @staticmethod
    def backward(ctx, dY):
        if ctx.plan is None:
            return fallback_backward(ctx, dY)
        X_rows, W, B, stats = ctx.saved_tensors
        need_dw = W is not None and ctx.needs_input_grad[1]
        need_db = B is not None and ctx.needs_input_grad[2]
        dX, dW, dB = norm_backward(ctx.plan, dY, X_rows, W, B, stats, 0.0, GEMMA, need_dw, need_db, False)
        return dX, dW, dB, None


def layer_norm_forward(X, W, B, eps):
    """The forward kernel alone, without autograd: ``(Y, X, Mean, RSTD, BLOCK_SIZE, num_warps)``:
    Y in X's shape and dtype, X as [rows, H] (a view where one exists), the fp32 per-row mean
    and 1/std [rows] that ``layer_norm_backward`` takes, and the forward's column block and warps.

    These run the Triton kernels (on a GPU, or on a CPU under ``TRITON_INTERPRET=1``);
    ``LigerLayerNormFunction`` is the differentiable entry that also falls back to the reference."""
    Y, X2, stats, plan = kernel_forward(X, W, B, eps, 0.0, GEMMA, is_rms=False)
    mean, rstd = stats.unbind(0)
    return Y, X2, mean, rstd, plan.fwd_block_n, plan.fwd_warps


def layer_norm_backward(dY, X, W, B, Mean, RSTD, needs_dw=None, needs_db=None):
    """The backward kernel alone: ``(dX in dY's shape, dW, dB)`` from what ``layer_norm_forward``
    returned; dW / dB in their parameter's dtype, None where the parameter is None or its
    ``needs_*`` is False (None: whenever the parameter is given). Never writes into dY."""
    return kernel_backward(dY, X, W, B, 0.0, GEMMA, needs_dw, needs_db, False, Mean=Mean, RSTD=RSTD)
