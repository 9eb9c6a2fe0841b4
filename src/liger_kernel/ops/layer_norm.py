"""LayerNorm: ``y = (x - mean(x)) / sqrt(var(x) + eps) * w + b`` over the last dimension,
computed in fp32 and cast to X's dtype. The kernels are shared with RMSNorm (``ops/norms.py``).
"""

import torch
import torch.nn.functional as F

from liger_kernel.ops.norms import GEMMA, check_norm_inputs, norm_backward, norm_forward
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
        check_norm_inputs(X, W, B)
        ctx.use_triton = use_triton(X) and X.dtype != torch.float64
        if not ctx.use_triton:
            return fallback_forward(ctx, layer_norm_reference, X, W, B, eps)
        Y, X2, stats = norm_forward(X, W, B, eps, 0.0, GEMMA, is_rms=False)
        ctx.save_for_backward(X2, W, B, stats)
        ctx.x_shape = X.shape
        return Y

    @staticmethod
    def backward(ctx, dY):
        if not ctx.use_triton:
            return fallback_backward(ctx, dY)
        X2, W, B, stats = ctx.saved_tensors
        need_dw = W is not None and ctx.needs_input_grad[1]
        need_db = B is not None and ctx.needs_input_grad[2]
        dX, dW, dB = norm_backward(dY, X2, W, B, stats, 0.0, GEMMA, False, need_dw, need_db, in_place=False)
        return dX.view(ctx.x_shape), dW, dB, None
