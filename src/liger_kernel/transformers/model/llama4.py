"""The forwards ``apply_liger_kernel_to_llama4`` installs: the generic causal-LM forward on
Llama4ForCausalLM and the generic multimodal one on Llama4ForConditionalGeneration, which has no
multimodal decoder module: ``multimodal_decoder`` is that part of its stock forward."""

from liger_kernel.transformers.model.causal_lm import causal_lm_forward as lce_forward

__all__ = ["lce_forward"]


def multimodal_decoder(
    model, input_ids=None, inputs_embeds=None, pixel_values=None, vision_feature_select_strategy=None, **kwargs
):
    """Llama4ForConditionalGeneration's forward up to its head: the projected image features in the
    image tokens' embeddings, then the text decoder (``model.language_model.model``), whose output
    (last hidden states, cache, router logits) it returns."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
    if pixel_values is not None and inputs_embeds is not None:
        raise ValueError("pixel_values goes with input_ids (its image tokens place the images), not inputs_embeds.")
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    if pixel_values is not None:
        # transformers 5.17 requires the (unused) strategy; 5.2x takes it in its kwargs.
        features = model.get_image_features(
            pixel_values=pixel_values, vision_feature_select_strategy=vision_feature_select_strategy, return_dict=True
        ).last_hidden_state
        projected = model.multi_modal_projector(features.view(-1, features.size(-1)))
        projected = projected.to(inputs_embeds.device, inputs_embeds.dtype)
        mask = model.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=projected)
        inputs_embeds = inputs_embeds.masked_scatter(mask, projected)
    return model.language_model.model(inputs_embeds=inputs_embeds, **kwargs)
