"""The one causal-LM forward that every patched family shares.

It runs the decoder as the stock forward does, then either computes logits and the model's
usual loss, or (``skip_logits``, the default when training with labels) hands the last hidden
states and ``lm_head.weight`` to the fused linear cross-entropy so the [B*T, V] logits never
exist. What differs between families is read from the config (Granite's ``logits_scaling``,
Falcon-H1's ``lm_head_multiplier``, Gemma's ``final_logit_softcapping``) or from the family's
table entry (the MoE auxiliary loss).
"""

import functools
import importlib
import inspect
import sys
from dataclasses import dataclass, fields

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast, MoeCausalLMOutputWithPast

from liger_kernel.transformers.fsdp import _FSDPForwardRedirection, is_fsdp_wrapped, module_gathering_weight
from liger_kernel.transformers.model.loss_utils import (
    LigerForCausalLMLoss,
    logits_extras,
    shifted_targets,
    token_scaled_loss,
    unpack_cross_entropy_result,
)
from liger_kernel.transformers.model_specs import spec_for

try:  # transformers >= 5.2x: also handles boolean per-sample masks
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:

    def slice_logits_to_keep(hidden_states, logits_to_keep):
        index = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, index, :]


# The KV cache's name in the running transformers: ``cache`` since 5.2x (``past_key_values`` is then
# deprecated, with a FutureWarning on every call), ``past_key_values`` before.
CACHE_ARG = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"
# Arguments of the peer's per-family forwards that the decoder reads from its kwargs when given.
_DECODER_OPTIONS = ("output_attentions", "output_hidden_states", "cache_position")


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


# What Hugging Face's multimodal outputs carry besides the loss, logits, cache, hidden states and
# attentions, across transformers 5.x (5.17: ``*_hidden_states`` and ``rope_deltas``; 5.2x: the
# encoders' ``*_outputs``); the multimodal forward passes on those its decoder returns.
MULTIMODAL_FIELDS = (
    "image_hidden_states",
    "video_hidden_states",
    "audio_hidden_states",
    "rope_deltas",
    "image_outputs",
    "video_outputs",
    "audio_outputs",
    "router_logits",
    "shared_kv_states",
)


@dataclass
class LigerMultimodalCausalLMOutputWithPast(LigerCausalLMOutputWithPast):
    """``LigerCausalLMOutputWithPast`` plus the multimodal decoder's outputs (``MULTIMODAL_FIELDS``)."""

    image_hidden_states: torch.FloatTensor | None = None
    video_hidden_states: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None
    rope_deltas: torch.LongTensor | None = None
    image_outputs: object | None = None
    video_outputs: object | None = None
    audio_outputs: object | None = None
    router_logits: tuple | None = None
    shared_kv_states: object | None = None
    aux_loss: torch.FloatTensor | None = None


def _head_loss(lm_head, hidden_states, hidden_size, labels, shift_labels, **loss_kwargs):
    return LigerForCausalLMLoss(
        hidden_states, lm_head.weight, labels, hidden_size, shift_labels=shift_labels, bias=lm_head.bias, **loss_kwargs
    )


def lce_maybe_trainable_lm_head(self, hidden_states, hidden_size, labels, shift_labels, **loss_kwargs):
    """The fused loss (``LigerForCausalLMLoss``) of ``hidden_states`` through ``self.lm_head``.

    A head sharded by FSDP (FSDP1 wrapper, FSDP2) or DeepSpeed ZeRO-3 holds only a shard of its
    weight outside its forward: the loss then runs as the forward that gathers it
    (``_FSDPForwardRedirection``), which also gathers it again for the backward. A PEFT
    ``modules_to_save`` head exposes its trainable copy's ``weight`` and ``bias`` itself.
    """
    lm_head = self.lm_head
    if is_fsdp_wrapped(lm_head):
        gatherer, lm_head = lm_head, lm_head.module
    else:
        gatherer = module_gathering_weight(lm_head)
    if gatherer is not None:
        return _FSDPForwardRedirection()(
            gatherer, _head_loss, lm_head, hidden_states, hidden_size, labels, shift_labels, **loss_kwargs
        )
    return _head_loss(lm_head, hidden_states, hidden_size, labels, shift_labels, **loss_kwargs)


def _decoder_kwargs(kwargs, past_key_values, output_attentions, output_hidden_states, cache_position):
    """The keyword arguments the decoder gets: ``kwargs`` (its ``cache`` popped from them), the KV
    cache under the running transformers' name, and the decoder options that were given."""
    cache = kwargs.pop("cache", None)
    if past_key_values is not None and cache is not None:
        raise ValueError("Got both past_key_values and cache: they are one KV cache, pass one of them.")
    model_kwargs = dict(kwargs)
    model_kwargs[CACHE_ARG] = cache if past_key_values is None else past_key_values
    given = zip(_DECODER_OPTIONS, (output_attentions, output_hidden_states, cache_position))
    model_kwargs.update((name, value) for name, value in given if value is not None)
    return model_kwargs


def _head_and_loss(
    self,
    last_hidden_state,
    labels,
    kwargs,
    logits_to_keep,
    skip_logits,
    return_token_accuracy,
    use_token_scaling,
    return_predicted_tokens,
):
    """``(loss, logits, token_accuracy, predicted_tokens)`` of the decoder's last hidden states
    through ``self.lm_head``: the fused loss without logits (``skip_logits``, default in training
    with targets), else the logits and the model's own loss on them. Scaling, multiplier and
    softcap are read from the text config (a multimodal model's ``text_config``)."""
    config = self.config.get_text_config()
    hidden_states = slice_logits_to_keep(last_hidden_state, logits_to_keep)

    shift_labels = kwargs.get("shift_labels")
    num_items_in_batch = kwargs.get("num_items_in_batch")
    ignore_index = kwargs.get("ignore_index", -100)
    has_targets = labels is not None or shift_labels is not None
    if skip_logits is None:
        skip_logits = self.training and has_targets
    if skip_logits and not has_targets:
        raise ValueError("skip_logits=True needs labels or shift_labels: without logits the loss is the only output.")
    scaling = getattr(config, "logits_scaling", None)  # Granite: logits = lm_head(h) / scaling
    multiplier = getattr(config, "lm_head_multiplier", None)  # Falcon-H1: logits = lm_head(h) * multiplier
    softcap = getattr(config, "final_logit_softcapping", None)

    logits = loss = token_accuracy = predicted_tokens = None
    if skip_logits:
        if scaling is not None:
            hidden_states = hidden_states / scaling  # (h / s) W^T == (h W^T) / s
        if multiplier is not None:
            hidden_states = hidden_states * multiplier
        result = lce_maybe_trainable_lm_head(
            self,
            hidden_states,
            hidden_states.shape[-1],
            labels,
            shift_labels,
            num_items_in_batch=num_items_in_batch,
            ignore_index=ignore_index,
            final_logit_softcapping=softcap,
            return_token_accuracy=return_token_accuracy,
            return_predicted_tokens=return_predicted_tokens,
            use_token_scaling=use_token_scaling,
        )
        loss, _, token_accuracy, predicted_tokens = unpack_cross_entropy_result(result)
    else:
        logits = self.lm_head(hidden_states)
        if scaling is not None:
            logits = logits / scaling
        if multiplier is not None:
            logits = logits * multiplier
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if has_targets:
            target = shifted_targets(labels, shift_labels, ignore_index).to(logits.device)
            if use_token_scaling:
                loss = token_scaled_loss(logits, target, ignore_index, num_items_in_batch)
            else:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=config.vocab_size, **kwargs)
            token_accuracy, predicted_tokens = logits_extras(
                logits, target, ignore_index, return_token_accuracy, return_predicted_tokens
            )

    return loss, logits, token_accuracy, predicted_tokens


def causal_lm_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    inputs_embeds=None,
    labels=None,
    use_cache=None,
    output_attentions=None,
    output_hidden_states=None,
    output_router_logits=None,
    return_dict=None,
    cache_position=None,
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
    divided by it) and ``ignore_index`` from them. MoE families whose stock forward does (Mixtral,
    Qwen3-MoE, GPT-OSS, ...: the entry's ``moe``) add ``router_aux_loss_coef`` times the
    load-balancing loss when ``output_router_logits``; every MoE decoder's router logits are returned.
    The KV cache comes as ``past_key_values`` or ``cache`` and goes to the decoder under the name
    the running transformers uses. ``output_attentions``, ``output_hidden_states`` and
    ``cache_position`` (the peer's per-family forwards take them) reach the decoder when given;
    ``return_dict=False`` (or the config's) returns a tuple.
    """
    spec = spec_for(self.config.model_type)
    moe = spec is not None and spec.moe
    routed = spec is not None and bool(spec.experts)  # a mixture of experts, with or without the balancing loss
    model_kwargs = _decoder_kwargs(kwargs, past_key_values, output_attentions, output_hidden_states, cache_position)
    if moe and output_router_logits is None:
        output_router_logits = self.config.output_router_logits
    if routed and output_router_logits is not None:
        model_kwargs["output_router_logits"] = output_router_logits
    outputs = self.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        **model_kwargs,
    )
    loss, logits, token_accuracy, predicted_tokens = _head_and_loss(
        self,
        outputs.last_hidden_state,
        labels,
        kwargs,
        logits_to_keep,
        skip_logits,
        return_token_accuracy,
        use_token_scaling,
        return_predicted_tokens,
    )
    common = {
        "loss": loss,
        "logits": logits,
        CACHE_ARG: getattr(outputs, CACHE_ARG),
        "hidden_states": outputs.hidden_states,
        "attentions": outputs.attentions,
        "token_accuracy": token_accuracy,
        "predicted_tokens": predicted_tokens,
    }
    # MoE decoders without the balancing loss in their stock forward (DeepSeek, HunYuan) still return router logits.
    if not routed:
        output = LigerCausalLMOutputWithPast(**common)
    else:
        aux_loss = None
        if moe and output_router_logits:
            common["loss"], aux_loss = _with_router_aux_loss(self, spec, loss, outputs, attention_mask)
        output = LigerMoeCausalLMOutputWithPast(aux_loss=aux_loss, router_logits=_router_logits(outputs), **common)
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)
    return output if return_dict else output.to_tuple()


def _router_logits(outputs):
    """The decoder's router logits; None where it records none (DeepSeek-V2/V3 and HunYuan-MoE in
    transformers 5.17 have no such output field)."""
    return getattr(outputs, "router_logits", None)


def _model_or_config(self, config, name):
    """The model's attribute ``name`` (the stock forwards read ``self.router_aux_loss_coef``), else the
    config's: a model-level 0 (no balancing loss, set by a trainer) is a value, not a fallback."""
    value = getattr(self, name, None)
    return getattr(config, name) if value is None else value


def _with_router_aux_loss(self, spec, loss, outputs, attention_mask):
    """``(loss + coefficient * aux_loss, aux_loss)``: the family's load-balancing loss (its module's
    ``load_balancing_loss_func``) of the decoder ``outputs``' router logits, with the expert counts and
    coefficient the model holds, else its text config's (a multimodal model's); ``loss`` None stays
    None. Without router logits there is no auxiliary loss: ``(loss, None)``."""
    router_logits = _router_logits(outputs)
    if router_logits is None:
        return loss, None
    config = self.config.get_text_config()
    experts = _model_or_config(self, config, "num_experts")
    top_k = _model_or_config(self, config, "num_experts_per_tok")
    coefficient = _model_or_config(self, config, "router_aux_loss_coef")
    balance = _imported(spec.module).load_balancing_loss_func
    aux_loss = balance(router_logits, experts, top_k, attention_mask)
    return (None if loss is None else loss + coefficient * aux_loss.to(loss.device)), aux_loss


def _multimodal_parts(self):
    """``(decoder, head)``: ``self.model`` and ``self``; for a family whose multimodal class has no
    decoder module (the entry's ``multimodal_decoder``: Llama 4), that function bound to ``self``
    and the causal LM it wraps (``self.language_model``), whose head, config and loss it uses."""
    spec = spec_for(self.config.model_type)
    if spec is None or spec.multimodal_decoder is None:
        return self.model, self
    module, name = spec.multimodal_decoder.rsplit(".", 1)
    return functools.partial(getattr(_imported(module), name), self), self.language_model


def _imported(name):
    """The module ``name`` (a modeling module: imported already, since its model runs) from
    ``sys.modules``, which Dynamo traces; ``importlib.import_module`` is a graph break."""
    return sys.modules.get(name) or importlib.import_module(name)


@functools.cache
def _takes_labels(decoder_class) -> bool:
    """Whether the multimodal decoder's forward names ``labels`` (Gemma 3's: the stock forward passes them)."""
    return "labels" in inspect.signature(decoder_class.forward).parameters


def lce_forward_for_multimodal(
    self,
    input_ids=None,
    *,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    inputs_embeds=None,
    labels=None,
    use_cache=None,
    output_attentions=None,
    output_hidden_states=None,
    return_dict=None,
    cache_position=None,
    logits_to_keep=0,
    skip_logits=None,
    return_token_accuracy=False,
    use_token_scaling=False,
    return_predicted_tokens=False,
    **kwargs,
):
    """The one ``*ForConditionalGeneration.forward`` of every patched vision-language family.

    ``self.model`` (the family's multimodal decoder) gets every input: pixel values, image and
    video grids, ``mm_token_type_ids``, ``token_type_ids``, cross-attention states and whatever
    else the family takes, through ``kwargs`` as the stock forward passes them. The head and the
    loss are ``causal_lm_forward``'s (same options: ``skip_logits``, token accuracy, DFT), read
    from the text config: in training with labels the logits never exist. Arguments after
    ``input_ids`` are keywords only, since the stock forwards order them differently per family.
    Mixtures of experts (the entry's ``moe``: GLM-4.5V, Qwen3-VL-MoE) add ``router_aux_loss_coef``
    times the load-balancing loss when ``output_router_logits`` (default: the text config's), as
    transformers 5.2x's forwards do.
    """
    decoder, head = _multimodal_parts(self)
    spec = spec_for(self.config.model_type)
    moe = spec is not None and spec.moe
    output_router_logits = kwargs.pop("output_router_logits", None)
    if moe and output_router_logits is None:
        output_router_logits = getattr(self.config.get_text_config(), "output_router_logits", False)
    model_kwargs = _decoder_kwargs(kwargs, past_key_values, output_attentions, output_hidden_states, cache_position)
    if output_router_logits is not None:
        model_kwargs["output_router_logits"] = output_router_logits
    if labels is not None and decoder is getattr(self, "model", None) and _takes_labels(type(decoder)):
        model_kwargs["labels"] = labels
    outputs = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        **model_kwargs,
    )
    loss, logits, token_accuracy, predicted_tokens = _head_and_loss(
        head,
        outputs.last_hidden_state,
        labels,
        kwargs,
        logits_to_keep,
        skip_logits,
        return_token_accuracy,
        use_token_scaling,
        return_predicted_tokens,
    )
    aux_loss = None
    if moe and output_router_logits:
        loss, aux_loss = _with_router_aux_loss(self, spec, loss, outputs, attention_mask)
    output = LigerMultimodalCausalLMOutputWithPast(
        loss=loss,
        logits=logits,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
        token_accuracy=token_accuracy,
        predicted_tokens=predicted_tokens,
        aux_loss=aux_loss,
        **{CACHE_ARG: getattr(outputs, CACHE_ARG)},
        # The output's own keys, not attributes: 5.2x keeps image_hidden_states as a deprecated property.
        **{name: outputs.get(name) for name in MULTIMODAL_FIELDS},
    )
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)
    return output if return_dict else output.to_tuple()
