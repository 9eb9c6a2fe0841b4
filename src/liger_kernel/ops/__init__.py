"""The engine: one module per op, each with its Triton kernels, autograd Function and PyTorch reference.

Names resolve lazily, so ``import liger_kernel.ops`` stays cheap; it does read the implementation
switch (``backends.registry``), so that an unknown ``LIGER_KERNEL_IMPL`` warns at import.
"""

import importlib

from liger_kernel.ops.backends import registry  # noqa: F401  (reads LIGER_KERNEL_IMPL)

# Every name of the namespace and the op module that defines it.
_NAMES = {
    "LigerCrossEntropyFunction": "cross_entropy",
    "cross_entropy_forward": "cross_entropy",
    "cross_entropy_backward": "cross_entropy",
    "LigerFusedLinearCrossEntropyFunction": "fused_linear_cross_entropy",
    "fused_linear_cross_entropy_forward": "fused_linear_cross_entropy",
    "fused_linear_cross_entropy_backward": "fused_linear_cross_entropy",
    "LigerGELUMulFunction": "geglu",
    "GrpoLossFunction": "grpo_loss",
    "geglu_forward": "geglu",
    "geglu_backward": "geglu",
    "LigerLayerNormFunction": "layer_norm",
    "layer_norm_forward": "layer_norm",
    "layer_norm_backward": "layer_norm",
    "LigerReLUSquaredFunction": "relu_squared",
    "relu_squared_forward": "relu_squared",
    "relu_squared_backward": "relu_squared",
    "LigerRMSNormFunction": "rms_norm",
    "rms_norm_forward": "rms_norm",
    "rms_norm_backward": "rms_norm",
    "LigerRopeFunction": "rope",
    "rope_forward": "rope",
    "rope_backward": "rope",
    "LigerSiLUMulFunction": "swiglu",
    "LigerFusedGateUpSiLUMulFunction": "swiglu",
    "swiglu_forward": "swiglu",
    "swiglu_backward": "swiglu",
    "LigerKLDivLossFunction": "kl_div",
    "LigerJSDFunction": "jsd",
    "jsd_forward": "jsd",
    "jsd_backward": "jsd",
    "LigerTVDLossFunction": "tvd",
    "LigerFusedLinearJSDFunction": "fused_linear_jsd",
    "fused_linear_jsd_forward": "fused_linear_jsd",
    "fused_linear_jsd_backward": "fused_linear_jsd",
    "LigerFusedLinearKLDivFunction": "fused_linear_kl_div",
    "fused_linear_kl_div_forward": "fused_linear_kl_div",
    "fused_linear_kl_div_backward": "fused_linear_kl_div",
    "LigerFusedCETVDFunction": "fused_ce_tvd",
    "fused_ce_tvd_forward": "fused_ce_tvd",
    "fused_ce_tvd_backward": "fused_ce_tvd",
    "LigerFusedMoEFunction": "fused_moe",
}

__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
