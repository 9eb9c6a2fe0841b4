"""The forward ``apply_liger_kernel_to_hunyuan_v1_dense`` and ``apply_liger_kernel_to_hunyuan_v1_moe``
install: the generic causal-LM forward itself."""

from liger_kernel.transformers.model.causal_lm import causal_lm_forward as lce_forward

__all__ = ["lce_forward"]
