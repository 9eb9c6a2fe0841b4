"""The forward ``apply_liger_kernel_to_gemma4_text`` installs: the generic causal-LM forward itself."""

from liger_kernel.transformers.model.causal_lm import causal_lm_forward as causal_forward

__all__ = ["causal_forward"]
