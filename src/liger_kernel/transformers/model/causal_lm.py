"""The one causal-LM forward that every patched family shares.

It runs the decoder as the stock forward does, then either computes logits and the model's
usual loss, or (``skip_logits``, the default when training with labels) hands the last hidden
states and ``lm_head.weight`` to the fused linear cross-entropy so the [B*T, V] logits never
exist. What differs between families is read from the config (Granite's ``logits_scaling``,
Gemma's ``final_logit_softcapping``) or from the family's table entry (the MoE auxiliary loss).
"""

import importlib
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast, MoeCausalLMOutputWithPast
from transformers.utils import can_return_tuple

from liger_kernel.transformers.model.loss_utils import (
    LigerForCausalLMLoss,
    logits_extras,
    shifted_targets,
    token_scaled_loss,
)
from liger_kernel.transformers.model_specs import MODEL_SPECS

try:  # transformers >= 5.2x: also handles boolean per-sample masks
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:

    def slice_logits_to_keep(hidden_states, logits_to_keep):
        index = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, index, :]


@dataclass
class LigerCausalLMOutputWithPast(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the fused loss's token accuracy and argmax tokens [B*T]."""

    token_accuracy: torch.FloatTensor | None = None
    predicted_tokens: torch.LongTensor | None = None


@dataclass
class LigerMoeCausalLMOutputWithPast(MoeCausalLMOutputWithPast):
    """``MoeCausalLMOutputWithPast`` plus the fused loss's token accuracy and argmax tokens [B*T]."""

    token_accuracy: torch.FloatTensor | None = None
    predicted_tokens: torch.LongTensor | None = None


@can_return_tuple
def causal_lm_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    inputs_embeds=None,
    labels=None,
    use_cache=None,
    output_router_logits=None,
    logits_to_keep=0,
    skip_logits=None,
    return_token_accuracy=False,
    use_token_scaling=False,
    return_predicted_tokens=False,
    **kwargs,
):
    """The stock ``<Model>ForCausalLM.forward`` arguments, plus:

    skip_logits: compute the loss without logits (``logits`` is then None); default
        ``self.training`` with labels. return_token_accuracy / return_predicted_tokens: add
        ``token_accuracy`` / ``predicted_tokens`` to the output. use_token_scaling: the DFT loss
        (each token's loss times the detached probability of its target).
    ``kwargs`` go to the decoder and the loss as in the stock forward; the loss reads
    ``shift_labels`` (targets already shifted, [B, T]), ``num_items_in_batch`` (the loss is a sum
    divided by it) and ``ignore_index`` from them. MoE families (Mixtral, Qwen3-MoE) add
    ``router_aux_loss_coef`` times the load-balancing loss when ``output_router_logits``.
    """
    spec = MODEL_SPECS.get(self.config.model_type)
    moe = spec is not None and spec.moe
    model_kwargs = dict(kwargs)
    if moe:
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        model_kwargs["output_router_logits"] = output_router_logits
    outputs = self.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        **model_kwargs,
    )
    hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)

    shift_labels = kwargs.get("shift_labels")
    num_items_in_batch = kwargs.get("num_items_in_batch")
    ignore_index = kwargs.get("ignore_index", -100)
    has_targets = labels is not None or shift_labels is not None
    if skip_logits is None:
        skip_logits = self.training and has_targets
    if skip_logits and not has_targets:
        raise ValueError("skip_logits=True needs labels or shift_labels: without logits the loss is the only output.")
    scaling = getattr(self.config, "logits_scaling", None)  # Granite: logits = lm_head(h) / scaling
    softcap = getattr(self.config, "final_logit_softcapping", None)

    logits = loss = token_accuracy = predicted_tokens = None
    if skip_logits:
        if scaling is not None:
            hidden_states = hidden_states / scaling  # (h / s) W^T == (h W^T) / s
        result = LigerForCausalLMLoss(
            hidden_states,
            self.lm_head.weight,
            labels,
            hidden_states.shape[-1],
            num_items_in_batch=num_items_in_batch,
            ignore_index=ignore_index,
            shift_labels=shift_labels,
            final_logit_softcapping=softcap,
            return_token_accuracy=return_token_accuracy,
            return_predicted_tokens=return_predicted_tokens,
            use_token_scaling=use_token_scaling,
            bias=self.lm_head.bias,
        )
        if return_token_accuracy or return_predicted_tokens:
            loss, token_accuracy, predicted_tokens = result.loss, result.token_accuracy, result.predicted_tokens
        else:
            loss = result
    else:
        logits = self.lm_head(hidden_states)
        if scaling is not None:
            logits = logits / scaling
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if has_targets:
            target = shifted_targets(labels, shift_labels, ignore_index).to(logits.device)
            if use_token_scaling:
                loss = token_scaled_loss(logits, target, ignore_index, num_items_in_batch)
            else:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            token_accuracy, predicted_tokens = logits_extras(
                logits, target, ignore_index, return_token_accuracy, return_predicted_tokens
            )

    common = {
        "loss": loss,
        "logits": logits,
        "past_key_values": outputs.past_key_values,
        "hidden_states": outputs.hidden_states,
        "attentions": outputs.attentions,
        "token_accuracy": token_accuracy,
        "predicted_tokens": predicted_tokens,
    }
    if not moe:
        return LigerCausalLMOutputWithPast(**common)
    aux_loss = None
    if output_router_logits:
        balance = importlib.import_module(spec.module).load_balancing_loss_func
        aux_loss = balance(outputs.router_logits, self.num_experts, self.num_experts_per_tok, attention_mask)
        if loss is not None:
            common["loss"] = loss + self.router_aux_loss_coef * aux_loss.to(loss.device)
    return LigerMoeCausalLMOutputWithPast(aux_loss=aux_loss, router_logits=outputs.router_logits, **common)
