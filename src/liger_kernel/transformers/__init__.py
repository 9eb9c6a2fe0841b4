"""The Hugging Face face of the engine: nn.Modules, functionals and model patching.

Names are resolved lazily: the modules need only torch; the patching names need transformers
and raise an ImportError saying so when it is missing.
"""

import importlib

_LAZY = {
    "LigerRMSNorm": "rms_norm",
    "LigerLayerNorm": "layer_norm",
    "LigerSwiGLUMLP": "swiglu",
    "LigerPhi3SwiGLUMLP": "swiglu",
    "LigerGEGLUMLP": "geglu",
    "liger_rotary_pos_emb": "rope",
    "LigerCrossEntropyLoss": "cross_entropy",
    "CrossEntropyOutput": "cross_entropy",
    "LigerFusedLinearCrossEntropyLoss": "fused_linear_cross_entropy",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
