"""The output classes of the patched causal-LM forward (defined in ``causal_lm``)."""

from liger_kernel.transformers.model.causal_lm import LigerCausalLMOutputWithPast, LigerMoeCausalLMOutputWithPast

__all__ = ["LigerCausalLMOutputWithPast", "LigerMoeCausalLMOutputWithPast"]
