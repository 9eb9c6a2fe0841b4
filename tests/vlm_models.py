"""Tiny vision-language models built from their configs, vision tower included, and a fake image
batch for each: what tests/test_convergence_vlm.py trains stock and patched. Every builder uses
only classes that transformers 5.17 and 5.24 both have."""

import torch
from parity import DEVICE, sizes
from transformers import AutoConfig, AutoModelForImageTextToText

# Text decoder and vision tower sizes: odd where free, tiny on CPU (the interpreter).
HIDDEN, INTERMEDIATE, LAYERS, HEADS, VOCAB, BATCH, SEQ = sizes(
    cpu=(32, 56, 2, 4, 97, 2, 13), gpu=(512, 1376, 2, 8, 4099, 2, 96)
)
VISION_HIDDEN, VISION_INTERMEDIATE = sizes(cpu=(24, 40), gpu=(256, 688))
HEAD_DIM = HIDDEN // HEADS
IMAGE, PATCH = 16, 4  # 16 patches of 4x4 per image
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = VOCAB - 1, VOCAB - 2, VOCAB - 3, VOCAB - 4


def text_config(**overrides):
    return (
        dict(
            hidden_size=HIDDEN,
            intermediate_size=INTERMEDIATE,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS // 2,
            head_dim=HEAD_DIM,
            vocab_size=VOCAB,
            max_position_embeddings=4 * SEQ,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            initializer_range=0.1,
        )
        | overrides
    )


def vision_config(model_type, **overrides):
    config = dict(
        model_type=model_type,
        hidden_size=VISION_HIDDEN,
        intermediate_size=VISION_INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE,
        patch_size=PATCH,
        initializer_range=0.1,
    )
    return config | overrides


# The mrope sections split head_dim / 2 frequencies between time, height and width.
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [HEAD_DIM // 4, HEAD_DIM // 8, HEAD_DIM // 8]}
QWEN_VL_TOKENS = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START)
QWEN_VISION = dict(patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, initializer_range=0.1)

# Per family: the config (besides model_type) and how an image becomes tokens.
CONFIGS = {
    "gemma3": dict(
        text_config=text_config(model_type="gemma3_text", sliding_window=8),
        vision_config=vision_config("siglip_vision_model"),
        mm_tokens_per_image=4,
        image_token_index=IMAGE_TOKEN,
        boi_token_index=VISION_START,
        eoi_token_index=VISION_END,
    ),
    "paligemma": dict(
        text_config=text_config(model_type="gemma", num_image_tokens=(IMAGE // PATCH) ** 2),
        vision_config=vision_config("siglip_vision_model", projection_dim=HIDDEN),
        image_token_index=IMAGE_TOKEN,
        projection_dim=HIDDEN,
        hidden_size=HIDDEN,
    ),
    "llava": dict(
        text_config=text_config(model_type="llama"),
        vision_config=vision_config("clip_vision_model", projection_dim=HIDDEN),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    ),
    "qwen2_vl": dict(
        text_config=text_config(model_type="qwen2_vl_text", rope_parameters=MROPE, **QWEN_VL_TOKENS),
        vision_config=dict(
            depth=2, embed_dim=VISION_HIDDEN, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, **QWEN_VISION
        ),
        **QWEN_VL_TOKENS,
    ),
    "qwen2_5_vl": dict(
        text_config=text_config(model_type="qwen2_5_vl_text", rope_parameters=MROPE, **QWEN_VL_TOKENS),
        vision_config=dict(
            depth=2,
            hidden_size=VISION_HIDDEN,
            intermediate_size=VISION_INTERMEDIATE,
            num_heads=2,
            out_hidden_size=HIDDEN,
            fullatt_block_indexes=[1],
            window_size=2 * PATCH * 2,
            hidden_act="silu",
            **QWEN_VISION,
        ),
        **QWEN_VL_TOKENS,
    ),
    "glm4v": dict(
        text_config=text_config(model_type="glm4v_text", rope_parameters=dict(MROPE, partial_rotary_factor=1.0)),
        vision_config=dict(
            depth=2,
            hidden_size=VISION_HIDDEN,
            intermediate_size=VISION_INTERMEDIATE,
            num_heads=2,
            out_hidden_size=HIDDEN,
            image_size=IMAGE,
            **QWEN_VISION,
        ),
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        image_start_token_id=VISION_START,
        image_end_token_id=VISION_END,
    ),
    "mllama": dict(
        text_config=text_config(model_type="mllama_text_model", cross_attention_layers=[1]),
        vision_config=dict(
            hidden_size=VISION_HIDDEN,
            intermediate_size=VISION_INTERMEDIATE,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            intermediate_layers_indices=[0],
            vision_output_dim=2 * VISION_HIDDEN,
            image_size=IMAGE,
            patch_size=PATCH,
            max_num_tiles=1,
            supported_aspect_ratios=[[1, 1]],
            initializer_range=0.1,
        ),
        image_token_index=IMAGE_TOKEN,
    ),
    "qwen3_vl": dict(
        text_config=text_config(
            model_type="qwen3_vl_text", rope_parameters=dict(MROPE, mrope_interleaved=True), **QWEN_VL_TOKENS
        ),
        vision_config=dict(
            depth=2,
            hidden_size=VISION_HIDDEN,
            intermediate_size=VISION_INTERMEDIATE,
            num_heads=2,
            out_hidden_size=HIDDEN,
            num_position_embeddings=(IMAGE // PATCH) ** 2,
            deepstack_visual_indexes=[0],
            **QWEN_VISION,
        ),
        **QWEN_VL_TOKENS,
    ),
    "internvl": dict(
        text_config=text_config(model_type="qwen2"),
        vision_config=vision_config(
            "internvl_vision", image_size=[IMAGE, IMAGE], patch_size=[PATCH, PATCH], use_mean_pooling=False
        ),
        image_token_id=IMAGE_TOKEN,
        image_seq_length=(IMAGE // PATCH) ** 2 // 4,
        downsample_ratio=0.5,
    ),
    "smolvlm": dict(
        text_config=text_config(model_type="llama"),
        vision_config=vision_config("smolvlm_vision"),
        image_token_id=IMAGE_TOKEN,
        scale_factor=2,
    ),
    "llama4": dict(
        text_config=text_config(
            model_type="llama4_text",
            intermediate_size_mlp=INTERMEDIATE,
            num_local_experts=1,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,
            attention_chunk_size=4 * SEQ,
        ),
        # The pixel-shuffled patches (4 x hidden) enter the adapter MLP, as wide as the encoder's.
        vision_config=dict(
            hidden_size=VISION_HIDDEN,
            intermediate_size=4 * VISION_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE,
            patch_size=PATCH,
            vision_output_dim=VISION_HIDDEN,
            projector_input_dim=VISION_HIDDEN,
            projector_output_dim=VISION_HIDDEN,
            initializer_range=0.1,
        ),
        image_token_index=IMAGE_TOKEN,
        boi_token_index=VISION_START,
        eoi_token_index=VISION_END,
    ),
    # Gemma 4: per-layer inputs (which the multimodal model builds with image tokens padded out), wider
    # full-attention heads and a softcap (KV sharing is test_convergence.py's gemma4_text); its vision
    # encoder takes lists of patches with their (x, y) positions and pools 2x2 patches a token.
    "gemma4": dict(
        text_config=text_config(
            model_type="gemma4_text",
            final_logit_softcapping=2.0,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            num_kv_shared_layers=0,
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=VOCAB,
            global_head_dim=2 * HEAD_DIM,
        ),
        vision_config=vision_config(
            "gemma4_vision",
            num_key_value_heads=2,
            head_dim=VISION_HIDDEN // 2,
            pooling_kernel_size=2,
            position_embedding_size=IMAGE // PATCH,
            image_size=None,
        ),
        audio_config=None,
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        boi_token_id=VISION_START,
        eoi_token_id=VISION_END,
    ),
}
# The vision-language mixtures of experts: GLM-4V's and Qwen3-VL's models with a dense first layer and a
# sparse second one (two experts, both active, and a shared one for GLM), trained with the router's loss.
MOE_TEXT = dict(num_experts_per_tok=2, moe_intermediate_size=INTERMEDIATE // 2, output_router_logits=True)
CONFIGS["glm4v_moe"] = CONFIGS["glm4v"] | dict(
    text_config=CONFIGS["glm4v"]["text_config"]
    | MOE_TEXT
    | dict(model_type="glm4v_moe_text", n_routed_experts=2, n_shared_experts=1, first_k_dense_replace=1)
    | dict(n_group=1, topk_group=1)
)
CONFIGS["qwen3_vl_moe"] = CONFIGS["qwen3_vl"] | dict(
    text_config=CONFIGS["qwen3_vl"]["text_config"]
    | MOE_TEXT
    | dict(model_type="qwen3_vl_moe_text", num_experts=2, decoder_sparse_step=1, mlp_only_layers=[0])
)
MOE = ("glm4v_moe", "qwen3_vl_moe")
# Image tokens per image in the text.
IMAGE_TOKENS = {
    "qwen3_vl": (IMAGE // PATCH) ** 2 // 4,
    "internvl": (IMAGE // PATCH) ** 2 // 4,
    "smolvlm": (IMAGE // PATCH) ** 2 // 4,
    "llama4": (IMAGE // PATCH) ** 2 // 4,
    "glm4v": (IMAGE // PATCH) ** 2 // 4,
    "mllama": 1,
    "gemma3": 4,
    "paligemma": (IMAGE // PATCH) ** 2,
    "llava": (IMAGE // PATCH) ** 2,
    "qwen2_vl": (IMAGE // PATCH) ** 2 // 4,
    "qwen2_5_vl": (IMAGE // PATCH) ** 2 // 4,
    "gemma4": (IMAGE // PATCH) ** 2 // 4,
    "glm4v_moe": (IMAGE // PATCH) ** 2 // 4,
    "qwen3_vl_moe": (IMAGE // PATCH) ** 2 // 4,
}


def make_config(model_type, **overrides):
    kwargs = dict(CONFIGS[model_type], **overrides)
    if model_type in MOE:
        kwargs["experts_implementation"] = "eager"  # the grouped-matmul path has no float64 reference run
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    for sub in ("text_config", "vision_config"):
        if getattr(config, sub, None) is not None:
            getattr(config, sub)._attn_implementation = "eager"
    return config


def build(model_type, dtype, seed=0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(make_config(model_type, **overrides))
    return model.to(DEVICE, dtype)


def _pixels(generator, *shape):
    """Random pixels that bf16 holds exactly, so every dtype's run sees the same image."""
    return torch.randn(*shape, generator=generator).bfloat16().float()


def make_inputs(model_type, seed, dtype, batch=BATCH, seq=SEQ):
    """One training batch: token ids with one image's placeholder tokens after the first token,
    labels (-100 on the image and a short prompt), and the family's image inputs."""
    g = torch.Generator().manual_seed(seed)
    n_image = IMAGE_TOKENS[model_type]
    ids = torch.randint(3, VOCAB - 4, (batch, seq + n_image), generator=g)
    image = slice(1, 1 + n_image)
    ids[:, image] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, : 1 + n_image + seq // 4] = -100
    inputs = {"input_ids": ids, "labels": labels}
    if model_type in ("gemma3", "paligemma", "llava", "internvl", "llama4"):
        inputs["pixel_values"] = _pixels(g, batch, 3, IMAGE, IMAGE)
    if model_type == "smolvlm":  # [B, images, C, H, W]
        inputs["pixel_values"] = _pixels(g, batch, 1, 3, IMAGE, IMAGE)
    if model_type in ("gemma3", "paligemma"):
        # Gemma 3: 1 on image tokens. PaliGemma: 0 on the prefix (image and prompt), 1 on the suffix.
        token_type = torch.zeros_like(ids)
        if model_type == "gemma3":
            token_type[:, image] = 1
        else:
            token_type[:, 1 + n_image + seq // 4 :] = 1
        inputs["token_type_ids"] = token_type
    if model_type == "mllama":  # one single-tile image per sample, seen by the cross-attention layers
        inputs["pixel_values"] = _pixels(g, batch, 1, 1, 3, IMAGE, IMAGE)
        inputs["aspect_ratio_ids"] = torch.ones(batch, 1, dtype=torch.long)
        inputs["aspect_ratio_mask"] = torch.ones(batch, 1, 1, dtype=torch.long)
        inputs["cross_attention_mask"] = torch.ones(batch, ids.shape[1], 1, 1, dtype=torch.long)
    if model_type == "gemma4":  # one image a sample as a list of 4x4 patches and their (x, y) positions
        grid = IMAGE // PATCH
        inputs["pixel_values"] = _pixels(g, batch, grid * grid, 3 * PATCH * PATCH)
        xy = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="xy"), dim=-1)
        inputs["image_position_ids"] = xy.reshape(1, grid * grid, 2).expand(batch, -1, -1)
        mm = torch.zeros_like(ids)
        mm[:, image] = 1
        inputs["mm_token_type_ids"] = mm
    if model_type in MOE:  # the stock forwards of transformers 5.17 add the router's loss only when asked
        inputs["output_router_logits"] = True
    if model_type in ("qwen2_vl", "qwen2_5_vl", "glm4v", "qwen3_vl", *MOE):
        grid = IMAGE // PATCH
        inputs["pixel_values"] = _pixels(g, batch * grid * grid, 3 * 2 * PATCH * PATCH)
        inputs["image_grid_thw"] = torch.tensor([[1, grid, grid]] * batch)
        ids[:, 0] = VISION_START
        mm = torch.zeros_like(ids)
        mm[:, image] = 1
        inputs["mm_token_type_ids"] = mm
    return {
        name: value.to(DEVICE, dtype) if value.is_floating_point() else value.to(DEVICE)
        for name, value in inputs.items()
        if isinstance(value, torch.Tensor)
    } | {name: value for name, value in inputs.items() if not isinstance(value, torch.Tensor)}
