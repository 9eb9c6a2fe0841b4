"""GeGLU: ``gelu_tanh(a) * b`` (Gemma's MLP). Same kernels as SwiGLU with the tanh-GELU activation."""

import torch
import torch.nn.functional as F

from liger_kernel.ops.swiglu import make_gated_function


def geglu_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The spec: ``gelu(a, approximate="tanh") * b`` in the inputs' dtype."""
    return F.gelu(a, approximate="tanh") * b


LigerGELUMulFunction = make_gated_function("LigerGELUMulFunction", "gelu_tanh", geglu_reference)
