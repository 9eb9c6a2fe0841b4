"""The Hugging Face face of the engine: nn.Modules, functionals and model patching.

Names are resolved lazily: the modules need only torch; the patching names need transformers
and raise an ImportError saying so when it is missing.
"""

import importlib

from liger_kernel.transformers.model_specs import MODEL_SPECS
from liger_kernel.utils import TRANSFORMERS_AVAILABLE, is_transformers_available

_LAZY = {
    "LigerRMSNorm": "rms_norm",
    "LigerRMSNormForGemma": "rms_norm",
    "LigerRMSNormForGemma2": "rms_norm",
    "LigerRMSNormForGemma3": "rms_norm",
    "LigerRMSNormForGemma4": "rms_norm",
    "LigerRMSNormForGlm4": "rms_norm",
    "LigerRMSNormForOlmo2": "rms_norm",
    "LigerRMSNormForQwen3Next": "rms_norm",
    "LigerRMSNormForMuseGlimmer": "rms_norm",
    "LigerRMSNormForMuseGlimmerTextCentered": "rms_norm",
    "LigerLayerNorm": "layer_norm",
    "LigerSwiGLUMLP": "swiglu",
    "LigerPhi3SwiGLUMLP": "swiglu",
    "LigerGEGLUMLP": "geglu",
    "LigerGEGLUMLPForGemma4": "geglu",
    "LigerBlockSparseTop2MLP": "swiglu",
    "LigerQwen3MoeSwiGLUMLP": "swiglu",
    "LigerHunyuanV1SwiGLUMLP": "swiglu",
    "LigerFalconH1SwiGLUMLP": "swiglu",
    "LigerSwiGLUMLPForMuseGlimmer": "swiglu",
    "LigerMLP": "mlp",
    "LigerReLUSquared": "relu_squared",
    "LigerFalconH1MLP": "mlp",
    "liger_rotary_pos_emb": "rope",
    "liger_rotary_pos_emb_gpt_oss": "rope",
    "liger_rotary_pos_emb_vision": "rope",
    "LigerCrossEntropyLoss": "cross_entropy",
    "CrossEntropyOutput": "cross_entropy",
    "LigerFusedLinearCrossEntropyLoss": "fused_linear_cross_entropy",
    "LigerKLDIVLoss": "kl_div",
    "LigerJSD": "jsd",
    "LigerTVDLoss": "tvd",
    "LigerFusedLinearJSD": "fused_linear_jsd",
    "LigerFusedLinearKLDivLoss": "fused_linear_kl_div",
    "LigerFusedCETVDLoss": "fused_ce_tvd",
    "LigerExperts": "swiglu",
}

# Patching names: they need transformers (one apply/revert pair per family of the table).
_PATCHING = {
    "AutoLigerKernelForCausalLM": "auto_model",
    "MODEL_TYPE_TO_APPLY_LIGER_FN": "monkey_patch",
    "_apply_liger_kernel": "monkey_patch",
    "_apply_liger_kernel_to_instance": "monkey_patch",
    **{f"{verb}_liger_kernel_to_{family}": "monkey_patch" for family in MODEL_SPECS for verb in ("apply", "revert")},
    # Any decoder, by structure (a type the table does not name).
    "apply_liger_kernel": "structural",
    "apply_liger_kernel_by_structure": "structural",
    "StructuralPatchReport": "structural",
}

# Importable but not in ``__all__``, as in the peer.
_NOT_IN_ALL = {"LigerVocabParallelCrossEntropy": "vocab_parallel_cross_entropy"}

__all__ = ["is_transformers_available", *_LAZY] + (list(_PATCHING) if TRANSFORMERS_AVAILABLE else [])


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in _NOT_IN_ALL:
        return getattr(importlib.import_module(f"{__name__}.{_NOT_IN_ALL[name]}"), name)
    if name in _PATCHING:
        if not TRANSFORMERS_AVAILABLE:
            raise ImportError(f"{name} patches Hugging Face models and needs transformers: pip install transformers")
        return getattr(importlib.import_module(f"{__name__}.{_PATCHING[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
