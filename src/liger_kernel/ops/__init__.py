"""The engine: one module per op, each with its Triton kernels, autograd Function and PyTorch reference.

Functions are imported lazily so that ``import liger_kernel.ops`` stays cheap.
"""

import importlib

_FUNCTIONS = {
    "LigerRMSNormFunction": "rms_norm",
    "LigerLayerNormFunction": "layer_norm",
    "LigerRopeFunction": "rope",
    "LigerSiLUMulFunction": "swiglu",
    "LigerGELUMulFunction": "geglu",
    "LigerCrossEntropyFunction": "cross_entropy",
    "LigerFusedLinearCrossEntropyFunction": "fused_linear_cross_entropy",
    "LigerFusedGateUpSiLUMulFunction": "swiglu",
    "swiglu_forward": "swiglu",
    "swiglu_backward": "swiglu",
    "geglu_forward": "geglu",
    "geglu_backward": "geglu",
    "rope_forward": "rope",
    "rope_backward": "rope",
}

__all__ = list(_FUNCTIONS)


def __getattr__(name):
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
