"""``liger_*`` functions: thin, argument-checked entries to the ops' autograd Functions."""

from liger_kernel.ops.geglu import LigerGELUMulFunction
from liger_kernel.ops.layer_norm import LigerLayerNormFunction
from liger_kernel.ops.rms_norm import LigerRMSNormFunction
from liger_kernel.ops.rope import LigerRopeFunction
from liger_kernel.ops.swiglu import LigerSiLUMulFunction


def liger_swiglu(a, b):
    """``silu(a) * b`` for tensors of one shape."""
    return LigerSiLUMulFunction.apply(a, b)


def liger_rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """RoPE of q [B, Hq, T, D] and k [B, Hk, T, D] in HF's rotate_half layout; ``(q_embed, k_embed)``."""
    return LigerRopeFunction.apply(q, k, cos, sin, position_ids, unsqueeze_dim, rotary_dim)


def liger_geglu(a, b):
    """``gelu_tanh(a) * b`` for tensors of one shape."""
    return LigerGELUMulFunction.apply(a, b)


def liger_rms_norm(X, W, eps, offset=0.0, casting_mode="llama", in_place=True):
    """RMSNorm of X [..., H] with weight W [H] (or None); ``casting_mode`` "llama", "gemma" or "none"."""
    return LigerRMSNormFunction.apply(X, W, eps, offset, casting_mode, in_place)


def liger_layer_norm(X, W, B, eps):
    """LayerNorm of X [..., H] with weight W [H] and bias B [H] (or None)."""
    return LigerLayerNormFunction.apply(X, W, B, eps)
