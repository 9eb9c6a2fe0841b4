"""GeGLU: ``gelu_tanh(a) * b`` (Gemma's MLP). Same kernels as SwiGLU with the tanh-GELU activation."""

import torch
import torch.nn.functional as F

from liger_kernel.ops.swiglu import (
    check_gated_inputs,
    check_same_shape,
    gated_apply_backward,
    gated_apply_forward,
    gated_backward,
    gated_forward,
    reference_vjp,
)
from liger_kernel.ops.utils import LigerFunction, fallback_backward
from liger_kernel.utils import use_triton


def geglu_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The spec: ``gelu(a, approximate="tanh") * b`` in the inputs' dtype."""
    return F.gelu(a, approximate="tanh") * b


class LigerGELUMulFunction(LigerFunction):
    """``gelu_tanh(a) * b`` with a fused Triton forward and backward.

    ``forward(a, b, in_place=None)``: ``in_place`` (ours) says whether backward may write da and
    db over a and b; see ``ops.swiglu.reuse_saved``. Leaves are never written.
    """

    @staticmethod
    def forward(ctx, a, b, in_place=None):
        return gated_apply_forward(ctx, geglu_reference, "gelu_tanh", a, b, 1.0, 1.0, in_place)

    @staticmethod
    def backward(ctx, dc):
        if not ctx.use_triton:
            return (*fallback_backward(ctx, dc), None)
        return (*gated_apply_backward(ctx, "LigerGELUMulFunction", dc), None)


def geglu_forward(a, b):
    """The peer's op helper: ``(a, b, c)`` with ``c = gelu_tanh(a) * b``, no autograd."""
    check_gated_inputs(a, b)
    if not use_triton(a):
        return a, b, geglu_reference(a, b)
    return a, b, gated_forward(a, b, "gelu_tanh")


def geglu_backward(a, b, dc):
    """The peer's op helper: ``(da, db)`` of ``geglu_forward`` for the upstream ``dc``, as new
    tensors (a and b are left intact)."""
    check_gated_inputs(a, b)
    check_same_shape(a=a, dc=dc)
    if not use_triton(a):
        return reference_vjp(geglu_reference, dc, a, b)
    return gated_backward(dc, a, b, "gelu_tanh")
