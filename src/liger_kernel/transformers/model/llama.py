"""The forward ``apply_liger_kernel_to_llama`` installs: the generic causal-LM forward itself."""

from liger_kernel.transformers.model.causal_lm import causal_lm_forward as lce_forward
from liger_kernel.transformers.model.causal_lm import lce_maybe_trainable_lm_head

__all__ = ["lce_forward", "lce_maybe_trainable_lm_head"]
