"""The forward ``apply_liger_kernel_to_llama4`` installs on Llama4ForCausalLM: the generic causal-LM
forward (Llama4ForConditionalGeneration keeps its own, which calls it)."""

from liger_kernel.transformers.model.causal_lm import causal_lm_forward as lce_forward

__all__ = ["lce_forward"]
