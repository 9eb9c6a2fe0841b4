"""``liger_*`` functions: thin, argument-checked entries to the ops' autograd Functions."""

from liger_kernel.ops.geglu import LigerGELUMulFunction
from liger_kernel.ops.swiglu import LigerSiLUMulFunction


def liger_swiglu(a, b):
    """``silu(a) * b`` for tensors of one shape."""
    return LigerSiLUMulFunction.apply(a, b)


def liger_geglu(a, b):
    """``gelu_tanh(a) * b`` for tensors of one shape."""
    return LigerGELUMulFunction.apply(a, b)
