"""The forwards ``apply_liger_kernel_to_mllama`` installs: the generic causal-LM forward
(MllamaForCausalLM, ``mllama_text_model``) and the generic multimodal one."""

from liger_kernel.transformers.model.causal_lm import causal_lm_forward as lce_forward
from liger_kernel.transformers.model.causal_lm import lce_forward_for_multimodal

__all__ = ["lce_forward", "lce_forward_for_multimodal"]
