"""The forward ``apply_liger_kernel_to_gpt_oss`` installs: the generic causal-LM forward itself."""

from liger_kernel.transformers.model.causal_lm import causal_lm_forward as lce_forward

__all__ = ["lce_forward"]
