"""The forward ``apply_liger_kernel_to_glm4v_moe`` installs: the generic multimodal forward itself."""

from liger_kernel.transformers.model.causal_lm import lce_forward_for_multimodal
from liger_kernel.transformers.model.causal_lm import lce_forward_for_multimodal as lce_forward

__all__ = ["lce_forward", "lce_forward_for_multimodal"]
