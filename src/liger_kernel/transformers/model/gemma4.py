"""The forwards ``apply_liger_kernel_to_gemma4_text`` and ``apply_liger_kernel_to_gemma4`` install:
the generic causal-LM forward and the generic multimodal one."""

from liger_kernel.transformers.model.causal_lm import causal_lm_forward as causal_forward
from liger_kernel.transformers.model.causal_lm import lce_forward_for_multimodal
from liger_kernel.transformers.model.causal_lm import lce_forward_for_multimodal as multimodal_forward

__all__ = ["causal_forward", "lce_forward_for_multimodal", "multimodal_forward"]
