"""Convergence of the mixture-of-experts families (every table entry with routed experts), with
test_convergence.py's yardstick: a mini model trained a few AdamW steps stock and patched from the
same initial state; per-step losses (the router's auxiliary loss included) and final parameters
as close to a float64 stock run as the stock run in the same dtype is, in fp32 and bf16. Also:
the auxiliary loss and its gradient with a real top-k choice, instance patching and its revert."""

import copy
import dataclasses
import importlib
import types

import pytest
import torch
import transformers
from parity import DEVICE, ON_GPU, assert_matches, sizes
from test_convergence import (
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    LAYERS,
    SEQ,
    VOCAB,
    assert_converges,
    build,
    float64_copy,
    make_batch,
    revert_all,  # noqa: F401 (autouse: every family reverted after each test)
)
from transformers import AutoConfig, AutoModelForImageTextToText

from liger_kernel.transformers import monkey_patch
from liger_kernel.transformers import rope as rope_functions
from liger_kernel.transformers.model_specs import MODEL_SPECS, SILU_EXPERTS
from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

MOE_FAMILIES = sorted(t for t, spec in MODEL_SPECS.items() if spec.experts)
LINEAR_ATTENTION = {
    "layer_types": ["linear_attention", "full_attention"] * (LAYERS // 2),
    "linear_num_value_heads": 2,
    "linear_num_key_heads": 2,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
}
# Multi-head latent attention: as many key/value heads as query heads, head_dim the rotary part.
MLA = {"num_key_value_heads": HEADS, "head_dim": 8, "kv_lora_rank": 16, "q_lora_rank": 24}
MLA |= {"qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 12}
# Every family: all experts active (a near-tie in routing cannot flip a token's expert between two
# runs), a dense layer next to the sparse one where the family has them, shared experts where it has them.
MOE_CONFIG = {
    "mixtral": {"num_local_experts": 2, "num_experts_per_tok": 2, "output_router_logits": True},
    "qwen3_moe": {
        "num_experts": 2,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": INTERMEDIATE // 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [0],  # the dense Qwen3MoeMLP next to the experts
        "output_router_logits": True,
    },
    "qwen3_next": {
        "num_experts": 2,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": INTERMEDIATE // 2,
        "shared_expert_intermediate_size": INTERMEDIATE // 2,
        "mlp_only_layers": [0],  # the dense Qwen3NextMLP next to the experts' shared one
        "output_router_logits": True,
        **LINEAR_ATTENTION,
    },
    "qwen3_5_moe": {
        "num_experts": 2,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": INTERMEDIATE // 2,
        "shared_expert_intermediate_size": INTERMEDIATE // 2,
        "output_router_logits": True,
        **LINEAR_ATTENTION,
    },
    # A sliding layer with a window shorter than the sequence; the attention sinks are stock. The clamp
    # binding on a fifth of the gate and up values at the CPU sizes (see GPT_OSS_FP32_GPU_LIMIT).
    "gpt_oss": {
        "swiglu_limit": sizes(cpu=1.0, gpu=7.0),
        "num_local_experts": 2,
        "num_experts_per_tok": 2,
        "output_router_logits": True,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"] * (LAYERS // 2),
    },
    # The first layer dense (first_k_dense_replace), the second sparse with a shared expert.
    "deepseek_v2": {
        "n_routed_experts": 2,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "moe_intermediate_size": INTERMEDIATE // 4,
        "first_k_dense_replace": 1,
        **MLA,
    },
    "deepseek_v3": {
        "n_routed_experts": 2,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "moe_intermediate_size": INTERMEDIATE // 4,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
        **MLA,
    },
    # Hyper-connections (2 residual streams) and compressed attention, stock; no auxiliary loss (see
    # test_router_aux_loss).
    "deepseek_v4": {
        "n_routed_experts": 2,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": INTERMEDIATE // 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "q_lora_rank": 16,
        "o_groups": 2,
        "o_lora_rank": 8,
        "index_n_heads": 2,
        "index_head_dim": 8,
        "index_topk": 4,
        "sliding_window": 4,
        "hc_mult": 2,
        "num_nextn_predict_layers": 0,
        # Learned routing in both layers: a hash layer's fixed choice (here one expert twice) leaves its
        # gate a gradient of zero in exact arithmetic, which no dtype's rounding can be measured against.
        "mlp_layer_types": ["moe"] * LAYERS,
    },
    "hunyuan_v1_moe": {"num_experts": 2, "moe_topk": 2, "use_qk_norm": True},
}
# The config a family's causal LM is built from, where the table key names the multimodal one.
CONFIG_TYPE = {"qwen3_5_moe": "qwen3_5_moe_text"}
# Vision-language MoE families, trained on text (with images: test_convergence_vlm.py): a one-block vision
# tower, the text decoder as the others (multimodal RoPE sections summing to the rotary half-width).
TEXT = {
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": HEADS // 2,
    "head_dim": HIDDEN // HEADS,
    "vocab_size": VOCAB,
    "max_position_embeddings": 2 * SEQ,
    "initializer_range": 0.1,
    "pad_token_id": 0,
}
VISION = {"depth": 1, "hidden_size": 16, "intermediate_size": 24, "num_heads": 2, "out_hidden_size": HIDDEN}
MROPE = {"rope_type": "default", "rope_theta": 10000.0}


def mrope_sections(pairs):
    """Temporal, height and width sections of the multimodal RoPE, summing to the rotated pairs."""
    return [pairs - 2 * (pairs // 3), pairs // 3, pairs // 3]


VISION_MOE_CONFIG = {
    # The first layer dense, the second sparse with a shared expert; GLM's rotary half of the head.
    "glm4v_moe": {
        "text_config": {
            **TEXT,
            **{k: v for k, v in MOE_CONFIG["deepseek_v3"].items() if k not in MLA},
            "rope_parameters": {
                **MROPE,
                "mrope_section": mrope_sections(HIDDEN // HEADS // 4),
                "partial_rotary_factor": 0.5,
            },
        },
        "vision_config": VISION,
    },
    "qwen3_vl_moe": {
        "text_config": {
            **TEXT,
            **{k: v for k, v in MOE_CONFIG["qwen3_moe"].items() if k != "output_router_logits"},
            "rope_parameters": {**MROPE, "mrope_section": mrope_sections(HIDDEN // HEADS // 2)},
        },
        "vision_config": {**VISION, "deepstack_visual_indexes": []},
    },
}
# Families whose RoPE kernel runs on CPU too (GPT-OSS has its own rotary function; the others are Llama's,
# covered by test_convergence.py): one interpreted program per token is ~10 s a run.
CPU_ROPE = ("gpt_oss",)
# GPT-OSS clamps its experts' gate and up values at ``swiglu_limit``: a kink, where an input's rounding
# decides whether the value's gradient passes. At the CPU sizes a limit of 1.0 clamps 20% of them and
# none lies within 4x fp32's error of it. At the GPU sizes (gate sd 3.2, 5.7M values per expert)
# the default 7.0 clamps 4.3%, and 33-427 values per expert lie that near: the fp32 stock run itself
# decides 1-3 of them otherwise than float64 (measured on the CPU at those sizes), each decision
# moving a bias gradient element by a whole token's term, and the patched run (another norm rounding)
# flips its own few: a lottery no rounding yardstick bounds (GPT-OSS fp32 up to 60x over it on the
# H200 at layer 3, where most values lie near). There the fp32 runs get a limit out of reach; bf16's
# stock runs flip as many values as the patched one and its yardstick holds.
GPT_OSS_FP32_GPU_LIMIT = 1e4


def build_moe(model_type, dtype, seed=0, **overrides):
    importlib.import_module(MODEL_SPECS[model_type].module)  # the families a transformers lacks fail here, clearly
    if model_type in VISION_MOE_CONFIG:
        torch.manual_seed(seed)
        parts = VISION_MOE_CONFIG[model_type] | {
            "text_config": VISION_MOE_CONFIG[model_type]["text_config"] | overrides
        }
        config = AutoConfig.for_model(model_type, **parts, attn_implementation="eager", experts_implementation="eager")
        model = AutoModelForImageTextToText.from_config(config).to(DEVICE, dtype)
    else:
        if model_type == "gpt_oss" and ON_GPU and dtype == torch.float32:
            overrides = {"swiglu_limit": GPT_OSS_FP32_GPU_LIMIT} | overrides
        model = build(CONFIG_TYPE.get(model_type, model_type), dtype, seed, **{**MOE_CONFIG[model_type], **overrides})
        if model_type == "gpt_oss":  # transformers 5.17's GptOssExperts hard-codes 7.0, not reading the config
            for experts in model.modules():
                if type(experts).__name__ == "GptOssExperts":
                    experts.limit = model.config.swiglu_limit
    return keep_in_fp32(model)


def keep_in_fp32(model):
    """What ``from_pretrained`` does in a lower precision: the parameters and buffers the model lists
    stay fp32 (routers; DeepSeek-V4's hyper-connections and norms, whose Sinkhorn mixing is fp32)."""
    keep = getattr(model, "_keep_in_fp32_modules_strict", None) or []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if any(f".{part}." in f".{name}." for part in keep):
            tensor.data = tensor.data.float()
    return model


def liger_modules(model):
    """The model's modules that are Liger adapters, by stock class name."""
    return sorted(type(m).stock_class.__name__ for m in model.modules() if hasattr(type(m), "stock_class"))


def expected_modules(model, spec, mlp=None):
    """The stock norm, MLP and (where switched to the fused ones) experts modules a patch converts
    (MLPs and experts only under the MLP flag, by default its default)."""
    mlp = spec.mlp_default if mlp is None else mlp
    names = (*spec.norms, *(spec.mlps if mlp else ()), *(spec.experts if mlp and spec.fused_experts else ()))
    return sorted(type(m).__name__ for m in model.modules() if type(m).__name__ in names)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("model_type", MOE_FAMILIES)
def test_moe_family_converges(model_type, dtype, mlp=None):
    """Class-level patch with the family's defaults (``mlp``: the MLP flag), model built afterwards,
    loaded with the stock model's initial weights; every norm, dense/shared MLP and routed experts
    module of it must be ours."""
    spec = MODEL_SPECS[model_type]
    if model_type == "deepseek_v4" and dtype == torch.bfloat16 and not ON_GPU:
        pytest.skip(
            "DeepSeek-V4 bf16 on CPU: the hyper-connections' gradients land 1.3-1.5x over the yardstick with the"
            " interpreter's truncating bf16 casts (fp32 passes); the GPU run checks it"
        )
    if model_type == "deepseek_v4" and dtype == torch.bfloat16 and not stock_deepseek_v4_norm_keeps_dtype():
        pytest.skip(
            f"transformers {transformers.__version__}'s DeepseekV4RMSNorm returns `weight * x.to(input_dtype)`: with"
            " the fp32 weight of _keep_in_fp32_modules_strict, bf16 activations leave it fp32 and the stock model"
            " fails at q_a_proj (modeling_deepseek_v4.py:807 in 5.17: 'expected mat1 and mat2 to have the same dtype')"
        )
    rope = spec.rope is not None and (ON_GPU or (model_type in CPU_ROPE and dtype == torch.float32))
    stock = build_moe(model_type, dtype)
    modeling = importlib.import_module(spec.module)
    model64 = float64_copy(stock)
    initial = copy.deepcopy(stock.state_dict())
    expected = expected_modules(stock, spec, mlp)

    def make():
        MODEL_TYPE_TO_APPLY_LIGER_FN[model_type](rope=rope, **({} if mlp is None else {spec.mlp_flag: mlp}))
        if rope:
            assert getattr(modeling, spec.rope) is getattr(rope_functions, spec.rope_fn)
        patched = build_moe(model_type, dtype)
        patched.load_state_dict(initial)
        assert liger_modules(patched) == expected
        return patched

    assert_converges(f"{model_type} {dtype}", model64, stock, make)


def stock_deepseek_v4_norm_keeps_dtype():
    """Whether the installed DeepSeek-V4 RMSNorm with its fp32 weight (as ``keep_in_fp32`` and
    ``from_pretrained`` in bf16 leave it) gives bf16 for bf16 input, as the next projection needs."""
    modeling = importlib.import_module(MODEL_SPECS["deepseek_v4"].module)
    return modeling.DeepseekV4RMSNorm(4)(torch.ones(1, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpt_oss_fused_experts_converge(dtype):
    """GPT-OSS with ``swiglu=True`` (off by default): its clamped, biased, interleaved experts fused."""
    test_moe_family_converges("gpt_oss", dtype, mlp=True)


@pytest.mark.parametrize("model_type", sorted(t for t in MOE_FAMILIES if MODEL_SPECS[t].moe))
def test_router_aux_loss(model_type):
    """Top-2 of 4 experts, so the load-balancing loss varies with the router: the patched
    forward's loss, auxiliary loss and router gradients track the float64 stock run (fp32, one step)."""
    if model_type == "deepseek_v4":
        pytest.skip("DeepseekV4Model records no router logits: the stock forward fails with output_router_logits")
    stock = build_moe(model_type, torch.float32, **router_config(model_type))
    model64, patched = float64_copy(stock), copy.deepcopy(stock)
    _apply_liger_kernel_to_instance(patched, rope=False)
    ids, labels = make_batch(11)
    outs = []
    for model in (model64, stock, patched):
        model.train()
        out = model(input_ids=ids, labels=labels, output_router_logits=True)
        out.loss.backward()
        outs.append(out)
    assert outs[2].aux_loss is not None and outs[2].logits is None  # the fused loss ran
    assert_matches(f"{model_type} loss", outs[2].loss, outs[0].loss, outs[1].loss)
    assert_matches(f"{model_type} aux loss", outs[2].aux_loss, outs[0].aux_loss, outs[1].aux_loss)
    named64, named_stock = dict(model64.named_parameters()), dict(stock.named_parameters())
    routers = [(n, p) for n, p in patched.named_parameters() if ".gate." in n or ".router." in n]
    assert routers
    for name, p in routers:
        assert_matches(f"{model_type} grad {name}", p.grad, named64[name].grad, named_stock[name].grad)


def router_config(model_type):
    """Four experts, top-2, with the family's own names for them."""
    config = MOE_CONFIG.get(model_type) or VISION_MOE_CONFIG[model_type]["text_config"]
    experts = next(key for key in ("num_local_experts", "num_experts", "n_routed_experts") if key in config)
    return {experts: 4, "num_experts_per_tok": 2}


@pytest.mark.parametrize("model_type", MOE_FAMILIES)
def test_moe_instance_patch_and_revert(model_type):
    """An already-built model converted in place keeps its parameters; the revert gives back the
    stock classes and forward, which then compute exactly what the untouched copy does."""
    spec = MODEL_SPECS[model_type]
    stock = build_moe(model_type, torch.float32)
    model = copy.deepcopy(stock)
    params = {name: p for name, p in model.named_parameters()}
    expected = expected_modules(model, spec)
    forward = type(model).forward
    _apply_liger_kernel_to_instance(model, rope=False)
    assert liger_modules(model) == expected
    assert {name: p for name, p in model.named_parameters()} == params
    generic = monkey_patch.causal_lm_forward if spec.causal_lm else monkey_patch.lce_forward_for_multimodal
    assert type(model).forward is generic
    ids, labels = make_batch(5)
    model.train()
    assert model(input_ids=ids, labels=labels).logits is None  # the fused loss

    getattr(monkey_patch, f"revert_liger_kernel_to_{model_type}")(model=model)
    assert liger_modules(model) == []
    assert type(model).forward is forward
    stock.train()
    assert torch.equal(model(input_ids=ids, labels=labels).loss, stock(input_ids=ids, labels=labels).loss)


class ReferenceExperts(torch.nn.Module):
    """The fused experts' contract for ``SILU_EXPERTS`` in plain PyTorch (built as ``(config)``,
    transformers' parameters ``gate_up_proj[E, 2I, H]`` and ``down_proj[E, H, I]``): a stand-in
    for ``LigerExperts`` that tests the table's switch apart from the kernel."""

    def __init__(self, config):
        super().__init__()
        experts = next(getattr(config, n) for n in ("num_experts", "num_local_experts") if hasattr(config, n))
        width = config.moe_intermediate_size
        self.gate_up_proj = torch.nn.Parameter(torch.empty(experts, 2 * width, config.hidden_size))
        self.down_proj = torch.nn.Parameter(torch.empty(experts, config.hidden_size, width))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        """Expert by expert on its tokens: indexing the weights by ``top_k_index`` would copy a
        [T, K, 2I, H] tensor (23.5 GB in fp32 at the GPU sizes, twice that in the float64 run)."""
        out = torch.zeros_like(hidden_states)
        for expert in range(self.gate_up_proj.shape[0]):
            token, slot = (top_k_index == expert).nonzero(as_tuple=True)
            gate, up = torch.nn.functional.linear(hidden_states[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, self.down_proj[expert])
            out = out.index_add(0, token, y * top_k_weights[token, slot, None])
        return out


def test_fused_experts_switch(monkeypatch):
    """``fused_experts=True`` on an entry is the whole switch: the class-level patch builds the
    fused module of the entry's kind in place of the stock experts (and the model converges), an
    instance patch converts them keeping their parameters, the revert restores them."""
    monkeypatch.setitem(monkey_patch._FUSED_EXPERTS, SILU_EXPERTS, (__name__, "ReferenceExperts"))
    monkeypatch.setattr(monkey_patch, "_ADAPTERS", {})  # adapters built here (on the stand-in) stay here
    monkeypatch.setitem(MODEL_SPECS, "qwen3_moe", dataclasses.replace(MODEL_SPECS["qwen3_moe"], fused_experts=True))
    test_moe_family_converges("qwen3_moe", torch.float32)  # expects the experts converted too
    monkey_patch.revert_liger_kernel_to_qwen3_moe()

    model = build_moe("qwen3_moe", torch.float32)
    params, stock = dict(model.named_parameters()), modules_of(model, "Qwen3MoeExperts")
    _apply_liger_kernel_to_instance(model, rope=False)
    assert stock and all(isinstance(m, ReferenceExperts) for m in stock)
    assert dict(model.named_parameters()) == params
    monkey_patch.revert_liger_kernel_to_qwen3_moe(model=model)
    assert liger_modules(model) == []


def modules_of(model, class_name):
    return [m for m in model.modules() if type(m).__name__ == class_name]


def test_fused_experts_have_a_module():
    """An entry switched to the fused experts names a kind that has a fused module."""
    for model_type, spec in MODEL_SPECS.items():
        assert not spec.fused_experts or spec.experts_kind in monkey_patch._FUSED_EXPERTS, model_type


@pytest.mark.parametrize("model_type", ["qwen3_moe", "qwen3_vl_moe"])
def test_model_level_router_coefficient_zero_is_honoured(model_type):
    """A coefficient of 0.0 set on the model (as a trainer turning the balancing loss off does) wins
    over the config's 1e-3: the loss is the LM loss alone, the auxiliary loss still reported."""
    model = build_moe(model_type, torch.float32, **router_config(model_type))
    _apply_liger_kernel_to_instance(model, rope=False)
    model.router_aux_loss_coef = 0.0
    ids, labels = make_batch(13)
    model.train()
    lm_loss = model(input_ids=ids, labels=labels, output_router_logits=False).loss
    out = model(input_ids=ids, labels=labels, output_router_logits=True)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert torch.equal(out.loss, lm_loss)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "qwen3_vl_moe"])
def test_decoder_without_router_logits(model_type, monkeypatch):
    """A decoder that records no router logits (no such output field, as DeepSeek-V2/V3 and HunYuan-MoE
    in transformers 5.17) gives the LM loss and no auxiliary loss, through the causal and the multimodal
    forward alike."""
    model = build_moe(model_type, torch.float32, **router_config(model_type))
    _apply_liger_kernel_to_instance(model, rope=False)
    ids, labels = make_batch(13)
    model.train()
    lm_loss = model(input_ids=ids, labels=labels, output_router_logits=False).loss
    decoder_forward = model.model.forward

    def without_router_logits(*args, **kwargs):
        out = decoder_forward(*args, **kwargs)
        return DecoderOutput(
            **{f.name: getattr(out, f.name) for f in dataclasses.fields(out) if f.name != "router_logits"}
        )

    monkeypatch.setattr(model.model, "forward", without_router_logits)
    out = model(input_ids=ids, labels=labels, output_router_logits=True)
    assert out.aux_loss is None
    assert torch.equal(out.loss, lm_loss)


class DecoderOutput(types.SimpleNamespace):
    """A decoder output with only the given fields (read as attributes or with ``get``, as ``ModelOutput``)."""

    def get(self, name, default=None):
        return getattr(self, name, default)
