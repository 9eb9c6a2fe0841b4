"""The declarative table of supported model families: the only place that knows about one.

Each entry names what the patcher swaps in ``transformers.models.<m>.modeling_<m>`` and the
numerics our kernels must reproduce there. Adding a family is adding an entry here (and a
convergence test), never writing a new patch function or forward. Every class and function an
entry names exists in transformers 5.17 (the GPU image) and 5.24 (checked in both wheels).
"""

from dataclasses import dataclass, replace

# MLP kinds: the Liger module that replaces the family's MLP and the activations it computes.
SWIGLU = "swiglu"  # gate_proj/up_proj/down_proj, silu(gate) * up
PHI3 = "phi3"  # one fused gate_up_proj, silu(gate) * up
GEGLU = "geglu"  # gate_proj/up_proj/down_proj, gelu_tanh(gate) * up
GEMMA4_GEGLU = "gemma4_geglu"  # GeGLU built as (config, layer_idx): double-wide in KV-sharing layers
HUNYUAN_SWIGLU = "hunyuan_swiglu"  # SwiGLU built as (config, layer_idx=None, is_shared_mlp=False)
FALCON_H1_SWIGLU = "falcon_h1_swiglu"  # SwiGLU with config.mlp_multipliers on the gate and the output
RELU2 = "relu2"  # no gated MLP: ReLU² replaces the activation module of down(relu2(up(x))) (Nemotron)
DEEPSEEK_V2_SWIGLU = "deepseek_v2_swiglu"  # SwiGLU built as (config, hidden_size=None, intermediate_size=None)
# MLP kinds that also run in token shards (``tiled_mlp=True``): the gated MLPs without multipliers or a fused gate_up.
TILEABLE_MLPS = (SWIGLU, GEGLU, GEMMA4_GEGLU, HUNYUAN_SWIGLU, DEEPSEEK_V2_SWIGLU)

# Experts kinds (mixture of experts): what a family's routed ``*Experts`` module computes per expert,
# the contract a fused experts module must meet to stand in for it (parameters as transformers 5.x lays
# them out: gate_up_proj [E, 2I, H], down_proj [E, H, I]).
SILU_EXPERTS = "silu_experts"  # silu(gate) * up on the two halves of gate_up_proj
# GPT-OSS: gate_up_proj [E, H, 2I] with gate/up interleaved, biases, (up + 1) * clamped gate * sigmoid(alpha gate)
GPT_OSS_EXPERTS = "gpt_oss_experts"
CLAMPED_SILU_EXPERTS = "clamped_silu_experts"  # DeepSeek-V4: silu(gate clamped) * up clamped, at swiglu_limit


@dataclass(frozen=True)
class NormSpec:
    """How a family's RMSNorm computes, in ``LigerRMSNorm``'s terms.

    ``offset`` and ``init_fn``: Gemma stores ``w - 1`` (zeros at init) and multiplies by
    ``1 + w``. ``casting_mode``: ``"llama"`` casts the normalized row back to the input dtype
    before the weight, ``"gemma"`` applies the weight in fp32 and casts last (Gemma, and OLMo 2
    whose ``(w * x_fp32).to(dtype)`` is the same thing). ``in_place``: the backward may reuse the
    output gradient's buffer only where nothing else reads it (the patch passes it to
    ``LigerRMSNorm`` as ``grad_output_unshared``); in post-norm layers (``residual + norm(x)``)
    that buffer is also the residual's gradient, so it must stay intact.
    """

    offset: float = 0.0
    casting_mode: str = "llama"
    init_fn: str = "ones"
    in_place: bool = True


LLAMA_NORM = NormSpec()
GEMMA_NORM = NormSpec(offset=1.0, casting_mode="gemma", init_fn="zeros")
GEMMA_POST_NORM = NormSpec(offset=1.0, casting_mode="gemma", init_fn="zeros", in_place=False)
OLMO2_NORM = NormSpec(casting_mode="gemma", in_place=False)
LLAMA_POST_NORM = NormSpec(in_place=False)
# Gemma 4: the weight at ones and applied in fp32, x_hat * w (some norms have no weight at all).
GEMMA4_NORM = NormSpec(casting_mode="gemma", in_place=False)
# GPT-OSS and DeepSeek-V4: (w * x_hat_fp32).to(dtype), pre-norm layers.
FP32_WEIGHT_NORM = NormSpec(casting_mode="gemma")


@dataclass(frozen=True)
class ModelSpec:
    """One model family.

    module: the modeling module whose symbols are swapped.
    causal_lm: the causal-LM class whose ``forward`` becomes the generic one (None: a family
        without one, as a vision-language family whose forward is ``multimodal``'s).
    norms: RMSNorm class names (all share ``norm`` numerics; q/k norms included).
    mlps: dense MLP class names replaced by ``mlp_kind`` (MoE routed experts: ``experts``).
    activation: the config attribute naming the MLP activation.
    rope: the module-level RoPE function name; None where our kernel does not compute the
        family's rotation (interleaved pairs, multimodal sections, a one-tensor signature): the
        ``rope`` flag then defaults to False, as in Liger Kernel 0.8.5, and True is ignored.
    moe: whether the forward adds the router load-balancing loss (the module's
        ``load_balancing_loss_func``, times the model's ``router_aux_loss_coef``).
    note: a sentence for the family's ``apply_liger_kernel_to_*`` docstring.

    Mixture of experts (shared experts and the dense layers of ``mlp_only_layers`` or
    ``first_k_dense_replace`` are dense MLPs: they are in ``mlps``):
    experts: the routed experts' class names (``*Experts``, one 3-D parameter pair per layer).
    experts_kind: what they compute (``SILU_EXPERTS``, ...): the math a fused module must match.
    fused_experts: the switch: True swaps ``experts`` for the fused experts module of
        ``experts_kind`` under the MLP flag; False leaves them stock.
    mlp_default: the MLP flag's default (False where Liger Kernel 0.8.5 defaults it off).
    rope_fn: our function (in ``liger_kernel.transformers.rope``) that replaces ``rope``.
    Vision-language families (and parts of one: ``causal_lm`` None, see ``tower``) also have:
    multimodal: the ``*ForConditionalGeneration`` class whose ``forward`` becomes
        ``lce_forward_for_multimodal``.
    layer_norm: how the module names torch's LayerNorm, swapped by the ``layer_norm`` flag:
        ``"LayerNorm"`` (imported by name) or ``"nn.LayerNorm"`` (through ``nn``).
    norm_registry: a module-level dict (name -> norm class) built at import time, whose swapped
        classes are swapped in it too (InternVL's ``NORM2FN``).
    towers: parts in other modules (vision encoders) or of other kinds patched with the family.
    decoders: table keys of text decoders patched with the family (its rope, norm and MLP
        flags; losses off: the loss is the multimodal forward's).
    by_config: with ``model=``, the table entries of its ``text_config`` / ``vision_config``
        model types are patched too (families that wrap any decoder, as LLaVA).
    multimodal_decoder: for a ``multimodal`` class without a decoder module (``self.model``), the
        dotted path of our function ``(model, input_ids=None, inputs_embeds=None, **inputs)`` that
        runs its encoders and text decoder; the head is then that of ``model.language_model``.
    signature: ``(name, default)`` of each parameter of ``apply_liger_kernel_to_*`` in Liger
        Kernel 0.8.5's order, ``("model", None)`` included where it is not last; empty: ``flags``.
    any_kwargs: the function also takes ``**kwargs`` (passed to the decoders' flags).
    """

    module: str
    causal_lm: str
    norms: tuple
    norm: NormSpec
    mlps: tuple
    mlp_kind: str
    activation: str = "hidden_act"
    rope: str = "apply_rotary_pos_emb"
    moe: bool = False
    note: str = ""
    experts: tuple = ()
    experts_kind: str = ""
    fused_experts: bool = False
    mlp_default: bool = True
    rope_fn: str = "liger_rotary_pos_emb"
    multimodal: str | None = None
    layer_norm: str | None = None
    norm_registry: str | None = None
    towers: tuple = ()
    decoders: tuple = ()
    by_config: bool = False
    multimodal_decoder: str | None = None
    signature: tuple = ()
    any_kwargs: bool = False

    @property
    def mlp_flag(self) -> str:
        """The name of the MLP switch in this family's ``apply_liger_kernel_to_*``."""
        if self.mlp_kind == RELU2:
            return "relu_squared"
        return "geglu" if self.mlp_kind in (GEGLU, GEMMA4_GEGLU) else "swiglu"

    @property
    def flags(self) -> tuple:
        """``(name, default)`` of each parameter of ``apply_liger_kernel_to_*``, in Liger Kernel
        0.8.5's order (``model=None`` follows unless listed). Nemotron's has only the activation
        and the losses, and takes any other keyword (``**kwargs``), as there."""
        if self.signature:
            return self.signature
        losses = (("cross_entropy", False), ("fused_linear_cross_entropy", True))
        if self.mlp_kind == RELU2:
            return ((self.mlp_flag, True), *losses)
        return (("rope", self.rope is not None), *losses, ("rms_norm", True), (self.mlp_flag, self.mlp_default))

    @property
    def extra_flags(self) -> tuple:
        """``(name, default)`` of our keyword-only parameters beyond Liger Kernel 0.8.5's, after
        ``model``: ``tiled_mlp`` (the MLP in token shards, recomputing gate and up in the backward:
        less memory for more FLOPs) where the family has an MLP flag, dense MLPs (or decoders) and
        an MLP kind with a tiled form."""
        has_mlps = bool(self.mlps or self.decoders)
        tileable = self.mlp_kind in TILEABLE_MLPS and self.mlp_flag in dict(self.flags) and has_mlps
        return (("tiled_mlp", False),) if tileable else ()

    @property
    def takes_kwargs(self) -> bool:
        return self.any_kwargs or self.mlp_kind == RELU2


GRANITE_NOTE = (
    "Granite defaults to the fused loss like every family here, where Liger Kernel 0.8.5 defaults it to "
    "``cross_entropy=True, fused_linear_cross_entropy=False`` (it has no fused forward for Granite): the generic "
    "forward divides the hidden states by ``logits_scaling`` before the fused loss, ``(h / s) W^T == (h W^T) / s``, "
    "so the loss is the stock one without the [B*T, V] logits. Pass ``cross_entropy=True, "
    "fused_linear_cross_entropy=False`` for the loss on logits."
)


FALCON_H1_NOTE = (
    "The generic forward multiplies the hidden states by ``lm_head_multiplier`` before the fused loss, "
    "``(h m) W^T == (h W^T) m``; the Mamba mixer and its gated norm stay stock."
)
NO_ROPE_NOTE = "Our RoPE kernel does not compute this family's rotation: ``rope=True`` is ignored."
QWEN3_5_NOTE = (
    "Also for ``qwen3_5_text``. The norms and MLPs of the vision-language ``Qwen3_5ForConditionalGeneration`` "
    "are these classes and are patched too; its forward (the loss on logits) stays stock. "
    "The gated DeltaNet and its gated norm stay stock. " + NO_ROPE_NOTE
)


def _hf(name: str) -> str:
    return f"transformers.models.{name}.modeling_{name}"


MODEL_SPECS = {
    "llama": ModelSpec(_hf("llama"), "LlamaForCausalLM", ("LlamaRMSNorm",), LLAMA_NORM, ("LlamaMLP",), SWIGLU),
    "mistral": ModelSpec(
        _hf("mistral"), "MistralForCausalLM", ("MistralRMSNorm",), LLAMA_NORM, ("MistralMLP",), SWIGLU
    ),
    "ministral": ModelSpec(
        _hf("ministral"), "MinistralForCausalLM", ("MinistralRMSNorm",), LLAMA_NORM, ("MinistralMLP",), SWIGLU
    ),
    # Mixtral's experts: one 3-D parameter pair, the fused experts module under the swiglu flag.
    "mixtral": ModelSpec(
        _hf("mixtral"),
        "MixtralForCausalLM",
        ("MixtralRMSNorm",),
        LLAMA_NORM,
        (),
        SWIGLU,
        moe=True,
        experts=("MixtralExperts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
    ),
    "qwen2": ModelSpec(_hf("qwen2"), "Qwen2ForCausalLM", ("Qwen2RMSNorm",), LLAMA_NORM, ("Qwen2MLP",), SWIGLU),
    "qwen3": ModelSpec(_hf("qwen3"), "Qwen3ForCausalLM", ("Qwen3RMSNorm",), LLAMA_NORM, ("Qwen3MLP",), SWIGLU),
    # Qwen3MoeMLP is the dense MLP of `mlp_only_layers`; the experts are the fused module.
    "qwen3_moe": ModelSpec(
        _hf("qwen3_moe"),
        "Qwen3MoeForCausalLM",
        ("Qwen3MoeRMSNorm",),
        LLAMA_NORM,
        ("Qwen3MoeMLP",),
        SWIGLU,
        moe=True,
        experts=("Qwen3MoeExperts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
    ),
    "gemma": ModelSpec(_hf("gemma"), "GemmaForCausalLM", ("GemmaRMSNorm",), GEMMA_NORM, ("GemmaMLP",), GEGLU),
    "gemma2": ModelSpec(
        _hf("gemma2"),
        "Gemma2ForCausalLM",
        ("Gemma2RMSNorm",),
        GEMMA_POST_NORM,
        ("Gemma2MLP",),
        GEGLU,
        activation="hidden_activation",
    ),
    "gemma3_text": ModelSpec(
        _hf("gemma3"),
        "Gemma3ForCausalLM",
        ("Gemma3RMSNorm",),
        GEMMA_POST_NORM,
        ("Gemma3MLP",),
        GEGLU,
        activation="hidden_activation",
    ),
    "phi3": ModelSpec(_hf("phi3"), "Phi3ForCausalLM", ("Phi3RMSNorm",), LLAMA_NORM, ("Phi3MLP",), PHI3),
    "granite": ModelSpec(
        _hf("granite"),
        "GraniteForCausalLM",
        ("GraniteRMSNorm",),
        LLAMA_NORM,
        ("GraniteMLP",),
        SWIGLU,
        note=GRANITE_NOTE,
    ),
    "olmo2": ModelSpec(_hf("olmo2"), "Olmo2ForCausalLM", ("Olmo2RMSNorm",), OLMO2_NORM, ("Olmo2MLP",), SWIGLU),
    "smollm3": ModelSpec(
        _hf("smollm3"), "SmolLM3ForCausalLM", ("SmolLM3RMSNorm",), LLAMA_NORM, ("SmolLM3MLP",), SWIGLU
    ),
    # GLM-4: one fused gate_up_proj as Phi-3; norms after attention and MLP (post-norm); interleaved RoPE.
    "glm4": ModelSpec(
        _hf("glm4"),
        "Glm4ForCausalLM",
        ("Glm4RMSNorm",),
        LLAMA_POST_NORM,
        ("Glm4MLP",),
        PHI3,
        rope=None,
        note=NO_ROPE_NOTE,
    ),
    "olmo3": ModelSpec(_hf("olmo3"), "Olmo3ForCausalLM", ("Olmo3RMSNorm",), OLMO2_NORM, ("Olmo3MLP",), SWIGLU),
    "exaone4": ModelSpec(
        _hf("exaone4"), "Exaone4ForCausalLM", ("Exaone4RMSNorm",), LLAMA_POST_NORM, ("Exaone4MLP",), SWIGLU
    ),
    "hunyuan_v1_dense": ModelSpec(
        _hf("hunyuan_v1_dense"),
        "HunYuanDenseV1ForCausalLM",
        ("HunYuanDenseV1RMSNorm",),
        LLAMA_NORM,
        ("HunYuanDenseV1MLP",),
        HUNYUAN_SWIGLU,
    ),
    "falcon_h1": ModelSpec(
        _hf("falcon_h1"),
        "FalconH1ForCausalLM",
        ("FalconH1RMSNorm",),
        LLAMA_NORM,
        ("FalconH1MLP",),
        FALCON_H1_SWIGLU,
        note=FALCON_H1_NOTE,
    ),
    "gemma4_text": ModelSpec(
        _hf("gemma4"),
        "Gemma4ForCausalLM",
        ("Gemma4RMSNorm",),
        GEMMA4_NORM,
        ("Gemma4TextMLP",),
        GEMMA4_GEGLU,
        activation="hidden_activation",
        rope=None,
        note=NO_ROPE_NOTE,
    ),
    # Qwen3.5: Gemma's norm numerics; linear-attention (gated DeltaNet) layers between the attention ones.
    "qwen3_5": ModelSpec(
        _hf("qwen3_5"),
        "Qwen3_5ForCausalLM",
        ("Qwen3_5RMSNorm",),
        GEMMA_NORM,
        ("Qwen3_5MLP",),
        SWIGLU,
        rope=None,
        note=QWEN3_5_NOTE,
    ),
    # Qwen3-Next: the dense and shared-expert MLPs and the routed experts are patched.
    "qwen3_next": ModelSpec(
        _hf("qwen3_next"),
        "Qwen3NextForCausalLM",
        ("Qwen3NextRMSNorm",),
        GEMMA_NORM,
        ("Qwen3NextMLP",),
        SWIGLU,
        rope=None,
        moe=True,
        note="The gated DeltaNet stays stock. " + NO_ROPE_NOTE,
        experts=("Qwen3NextExperts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
    ),
    # Nemotron: LayerNorm1P (kept stock) and a plain MLP, down(relu2(up(x))): ReLU² is what Liger swaps.
    "nemotron": ModelSpec(_hf("nemotron"), "NemotronForCausalLM", (), LLAMA_NORM, (), RELU2, rope=None),
}

# Model types whose apply function is another type's: the text decoder of a multimodal family.
ALIASES = {"qwen3_5_text": "qwen3_5"}

# Mixture of experts. Routed experts are the fused module where the entry sets ``fused_experts``; shared experts
# and dense layers are dense SwiGLU MLPs (``mlps``); attention (MLA, sinks, sliding windows) stays stock.
EXPERTS_NOTE = "swiglu: the shared MLP and the routed experts (the fused experts module)."
GPT_OSS_NOTE = (
    "Our RoPE kernel computes GPT-OSS's rotation (``liger_rotary_pos_emb_gpt_oss``); the attention with its "
    "sinks and sliding windows and the router stay stock; ``swiglu`` (default False, as in Liger Kernel 0.8.5) "
    "swaps the experts (clamped gating with biases) for the fused experts module."
)
DEEPSEEK_NOTE = (
    "Multi-head latent attention stays stock (its q/kv norms are ours); the dense MLPs of the first "
    "``first_k_dense_replace`` layers, the shared experts and the routed experts (fused) are ours. " + NO_ROPE_NOTE
)
DEEPSEEK_V4_NOTE = (
    "DeepSeek-V4's MLPs clamp the gate and up projections at ``swiglu_limit``, which our SwiGLU kernel does "
    "not: ``swiglu`` patches nothing (default False, as in Liger Kernel 0.8.5). The attention with its "
    "compressors, the hyper-connections and the routed experts stay stock. " + NO_ROPE_NOTE
)
QWEN3_5_MOE_NOTE = (
    "Also for ``qwen3_5_moe_text``. The norms and shared-expert MLPs of the vision-language "
    "``Qwen3_5MoeForConditionalGeneration`` are these classes and are patched too; its forward (the loss on "
    "logits) stays stock. The gated DeltaNet stays stock; the routed experts are the fused module. " + NO_ROPE_NOTE
)
VISION_MOE_NOTE = (
    "The ``*ForConditionalGeneration`` forward is ``lce_forward_for_multimodal`` (the load-balancing loss "
    "added when ``output_router_logits``); the vision tower's MLP stays stock, the routed experts are the "
    "fused module."
)
MOE_SPECS = {
    "gpt_oss": ModelSpec(
        _hf("gpt_oss"),
        "GptOssForCausalLM",
        ("GptOssRMSNorm",),
        FP32_WEIGHT_NORM,
        (),
        SWIGLU,
        moe=True,
        note=GPT_OSS_NOTE,
        experts=("GptOssExperts",),
        experts_kind=GPT_OSS_EXPERTS,
        fused_experts=True,
        mlp_default=False,
        rope_fn="liger_rotary_pos_emb_gpt_oss",
    ),
    "deepseek_v2": ModelSpec(
        _hf("deepseek_v2"),
        "DeepseekV2ForCausalLM",
        ("DeepseekV2RMSNorm",),
        LLAMA_NORM,
        ("DeepseekV2MLP",),
        DEEPSEEK_V2_SWIGLU,
        rope=None,
        note=DEEPSEEK_NOTE,
        experts=("DeepseekV2Experts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
    ),
    "deepseek_v3": ModelSpec(
        _hf("deepseek_v3"),
        "DeepseekV3ForCausalLM",
        ("DeepseekV3RMSNorm",),
        LLAMA_NORM,
        ("DeepseekV3MLP",),
        SWIGLU,
        rope=None,
        note=DEEPSEEK_NOTE,
        experts=("DeepseekV3Experts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
    ),
    "deepseek_v4": ModelSpec(
        _hf("deepseek_v4"),
        "DeepseekV4ForCausalLM",
        ("DeepseekV4RMSNorm",),
        FP32_WEIGHT_NORM,
        (),
        SWIGLU,
        rope=None,
        moe=True,
        note=DEEPSEEK_V4_NOTE,
        experts=("DeepseekV4Experts",),
        experts_kind=CLAMPED_SILU_EXPERTS,
        mlp_default=False,
    ),
    # The shared expert (Qwen3_5MoeMLP) is the only dense MLP; every layer is sparse.
    "qwen3_5_moe": ModelSpec(
        _hf("qwen3_5_moe"),
        "Qwen3_5MoeForCausalLM",
        ("Qwen3_5MoeRMSNorm",),
        GEMMA_NORM,
        ("Qwen3_5MoeMLP",),
        SWIGLU,
        rope=None,
        moe=True,
        note=QWEN3_5_MOE_NOTE,
        experts=("Qwen3_5MoeExperts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
    ),
    # Every layer sparse, with a shared MLP (HunYuanMoEV1MLP); no load-balancing loss in the stock forward.
    "hunyuan_v1_moe": ModelSpec(
        _hf("hunyuan_v1_moe"),
        "HunYuanMoEV1ForCausalLM",
        ("HunYuanMoEV1RMSNorm",),
        LLAMA_NORM,
        ("HunYuanMoEV1MLP",),
        SWIGLU,
        note=EXPERTS_NOTE,
        experts=("HunYuanMoEV1Experts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
    ),
    # Vision-language MoE: the text decoder's norms, dense and shared MLPs (and the vision blocks'
    # RMSNorms) are ours, and the multimodal forward (no causal LM class).
    "glm4v_moe": ModelSpec(
        _hf("glm4v_moe"),
        None,
        ("Glm4vMoeTextRMSNorm", "Glm4vMoeRMSNorm"),
        LLAMA_POST_NORM,  # the vision tower's norm outputs may feed more than one consumer: no in-place backward
        ("Glm4vMoeTextMLP",),
        SWIGLU,
        rope=None,
        note=VISION_MOE_NOTE + " " + NO_ROPE_NOTE,
        experts=("Glm4vMoeTextExperts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
        moe=True,
        multimodal="Glm4vMoeForConditionalGeneration",
    ),
    "qwen3_vl_moe": ModelSpec(
        _hf("qwen3_vl_moe"),
        None,
        ("Qwen3VLMoeTextRMSNorm",),
        LLAMA_NORM,
        ("Qwen3VLMoeTextMLP",),
        SWIGLU,
        note="Also for ``qwen3_vl_moe_text``. " + VISION_MOE_NOTE,
        experts=("Qwen3VLMoeTextExperts",),
        experts_kind=SILU_EXPERTS,
        fused_experts=True,
        moe=True,
        multimodal="Qwen3VLMoeForConditionalGeneration",
    ),
}
MODEL_SPECS.update(MOE_SPECS)
ALIASES.update({"qwen3_5_moe_text": "qwen3_5_moe", "qwen3_vl_moe_text": "qwen3_vl_moe"})


# ---- Vision-language families ---------------------------------------------------------------
# Each is its decoder's entry (or none, for families that wrap any decoder) plus the multimodal
# forward and its vision tower's parts. The flags and defaults are Liger Kernel 0.8.5's.


def tower(module, norms=(), norm=LLAMA_NORM, mlps=(), mlp_kind=SWIGLU, layer_norm=None, norm_registry=None):
    """A vision encoder's part of a family: its RMSNorms and gated MLPs (the ``rms_norm`` and MLP
    flags) and torch's LayerNorm as the module names it (the ``layer_norm`` flag)."""
    return ModelSpec(
        module, None, norms, norm, mlps, mlp_kind, rope=None, layer_norm=layer_norm, norm_registry=norm_registry
    )


def _flags(*names, **defaults):
    """A signature in Liger Kernel 0.8.5's order: ``names`` default True unless in ``defaults``."""
    return tuple((name, defaults.get(name, name not in ("rope", "cross_entropy"))) for name in names)


LOSSES = ("cross_entropy", "fused_linear_cross_entropy")
SIGLIP = tower(_hf("siglip"), layer_norm="nn.LayerNorm")
MROPE_NOTE = (
    "The multimodal RoPE sections are merged into cos and sin by the rotary embedding module, so the "
    "rotation itself is the standard one our RoPE kernel computes (``rope``)."
)
WRAPPER_NOTE = (
    "With ``model=``, the decoder (``text_config.model_type``) and the vision encoder (``vision_config``) "
    "are patched by their own table entries when they have one; the other keywords go to them."
)

VISION_LANGUAGE_SPECS = {
    "gemma3": replace(
        MODEL_SPECS["gemma3_text"],
        multimodal="Gemma3ForConditionalGeneration",
        towers=(SIGLIP,),
        signature=_flags("rope", *LOSSES, "layer_norm", "rms_norm", "geglu", rope=True),
        note="Also the text-only Gemma3ForCausalLM. layer_norm: the SigLIP vision tower's LayerNorms.",
    ),
    "paligemma": ModelSpec(
        _hf("paligemma"),
        None,
        (),
        LLAMA_NORM,
        (),
        GEGLU,
        rope=None,
        multimodal="PaliGemmaForConditionalGeneration",
        towers=(SIGLIP,),
        decoders=("gemma", "gemma2"),
        signature=_flags("rope", *LOSSES, "layer_norm", "rms_norm", "geglu", rope=True),
        note="The Gemma and Gemma 2 decoders (rope, rms_norm, geglu); layer_norm: the SigLIP vision tower.",
    ),
    # GLM-4V: post-norm layers, fused gate_up_proj and interleaved RoPE as GLM-4; Glm4vRMSNorm is
    # also the vision blocks' norm. The vision MLP is sized by out_hidden_size: left stock.
    "glm4v": ModelSpec(
        _hf("glm4v"),
        None,
        ("Glm4vRMSNorm",),
        LLAMA_POST_NORM,
        ("Glm4vTextMLP",),
        PHI3,
        rope=None,
        multimodal="Glm4vForConditionalGeneration",
        signature=_flags("rope", *LOSSES, "rms_norm", "swiglu"),
        note=NO_ROPE_NOTE,
    ),
    "llava": ModelSpec(
        _hf("llava"),
        None,
        (),
        LLAMA_NORM,
        (),
        SWIGLU,
        rope=None,
        multimodal="LlavaForConditionalGeneration",
        by_config=True,
        signature=_flags(*LOSSES),
        any_kwargs=True,
        note=WRAPPER_NOTE,
    ),
    "mllama": ModelSpec(
        _hf("mllama"),
        "MllamaForCausalLM",
        ("MllamaTextRMSNorm",),
        LLAMA_NORM,
        ("MllamaTextMLP",),
        SWIGLU,
        multimodal="MllamaForConditionalGeneration",
        towers=(tower(_hf("mllama"), layer_norm="nn.LayerNorm"),),
        signature=_flags("rope", *LOSSES, "layer_norm", "rms_norm", "swiglu", rope=True),
        note="Also for ``mllama_text_model`` (MllamaForCausalLM). layer_norm: the vision encoder's LayerNorms.",
    ),
    # The vision blocks' MLP is not gated (quick_gelu) and stays stock.
    "qwen2_vl": ModelSpec(
        _hf("qwen2_vl"),
        None,
        ("Qwen2VLRMSNorm",),
        LLAMA_NORM,
        ("Qwen2MLP",),
        SWIGLU,
        multimodal="Qwen2VLForConditionalGeneration",
        towers=(tower(_hf("qwen2_vl"), layer_norm="LayerNorm"),),
        signature=_flags("rope", *LOSSES, "rms_norm", "layer_norm", "swiglu", rope=True),
        note="Also for ``qwen2_vl_text``. layer_norm: the vision blocks' and merger's LayerNorms. " + MROPE_NOTE,
    ),
    # Qwen2_5_VLRMSNorm is also the vision blocks' norm; their gated MLP has biases and stays stock.
    "qwen2_5_vl": ModelSpec(
        _hf("qwen2_5_vl"),
        None,
        ("Qwen2_5_VLRMSNorm",),
        LLAMA_NORM,
        ("Qwen2MLP",),
        SWIGLU,
        multimodal="Qwen2_5_VLForConditionalGeneration",
        signature=_flags("rope", *LOSSES, "rms_norm", "swiglu", rope=True),
        note="Also for ``qwen2_5_vl_text``; rms_norm covers the vision blocks too. " + MROPE_NOTE,
    ),
    # Qwen3-VL: the interleaved multimodal sections are merged into cos and sin as in Qwen2-VL;
    # Liger Kernel 0.8.5 leaves the MLP stock by default (swiglu=False).
    "qwen3_vl": ModelSpec(
        _hf("qwen3_vl"),
        None,
        ("Qwen3VLTextRMSNorm",),
        LLAMA_NORM,
        ("Qwen3VLTextMLP",),
        SWIGLU,
        multimodal="Qwen3VLForConditionalGeneration",
        signature=_flags("rope", *LOSSES, "rms_norm", "swiglu", rope=True, swiglu=False),
        note="Also for ``qwen3_vl_text``. The vision tower (LayerNorm, GELU MLP) stays stock. " + MROPE_NOTE,
    ),
    # Gemma 4: Gemma4RMSNorm is also the vision and audio encoders' norm. Its only LayerNorms (the
    # audio encoder's) have no bias, which LigerLayerNorm would add: layer_norm patches nothing.
    "gemma4": replace(
        MODEL_SPECS["gemma4_text"],
        multimodal="Gemma4ForConditionalGeneration",
        signature=_flags("rope", *LOSSES, "layer_norm", "rms_norm", "geglu", layer_norm=False),
        note="Also the text-only Gemma4ForCausalLM; rms_norm covers the vision and audio encoders. "
        "layer_norm: Gemma 4's LayerNorms have no bias and stay stock. " + NO_ROPE_NOTE,
    ),
    "internvl": ModelSpec(
        _hf("internvl"),
        None,
        (),
        LLAMA_NORM,
        (),
        SWIGLU,
        rope=None,
        multimodal="InternVLForConditionalGeneration",
        towers=(
            tower(
                _hf("internvl"), norms=("InternVLVisionRMSNorm",), layer_norm="nn.LayerNorm", norm_registry="NORM2FN"
            ),
        ),
        by_config=True,
        signature=_flags(*LOSSES, "rms_norm", "layer_norm"),
        any_kwargs=True,
        note="rms_norm, layer_norm: the vision encoder's norms (either kind, by its ``norm_type``) and the "
        "projector's LayerNorm. " + WRAPPER_NOTE,
    ),
    "smolvlm": ModelSpec(
        _hf("smolvlm"),
        None,
        (),
        LLAMA_NORM,
        (),
        SWIGLU,
        rope=None,
        multimodal="SmolVLMForConditionalGeneration",
        towers=(tower(_hf("smolvlm"), layer_norm="nn.LayerNorm"),),
        by_config=True,
        signature=_flags(*LOSSES, "rms_norm", "layer_norm"),
        any_kwargs=True,
        note="layer_norm: the vision encoder's LayerNorms. " + WRAPPER_NOTE,
    ),
    # Llama 4: the shared expert and the dense layers' MLP are Llama4TextMLP; the routed experts stay
    # stock. Llama4ForConditionalGeneration has no multimodal decoder module: ours runs its vision
    # tower and text model (``multimodal_decoder``), the head is its Llama4ForCausalLM's.
    "llama4": ModelSpec(
        _hf("llama4"),
        "Llama4ForCausalLM",
        ("Llama4TextRMSNorm",),
        LLAMA_NORM,
        ("Llama4TextMLP",),
        SWIGLU,
        rope=None,
        multimodal="Llama4ForConditionalGeneration",
        multimodal_decoder="liger_kernel.transformers.model.llama4.multimodal_decoder",
        towers=(tower(_hf("llama4"), layer_norm="nn.LayerNorm"),),
        signature=(*_flags("rope", *LOSSES, "rms_norm", "swiglu", rope=True), ("model", None), ("layer_norm", True)),
        note="Also for ``llama4_text``. layer_norm: the vision encoder's LayerNorms. " + NO_ROPE_NOTE,
    ),
    # A vision encoder alone (LLaVA's, by its vision_config): no head, no loss flags.
    "pixtral": ModelSpec(
        _hf("pixtral"),
        None,
        ("PixtralRMSNorm",),
        LLAMA_NORM,
        ("PixtralMLP",),
        SWIGLU,
        rope=None,
        signature=_flags("rope", "rms_norm", "swiglu", rope=True),
        note="The vision encoder only. Its RoPE is called with one-dimensional patch positions "
        "(``unsqueeze_dim=0``), which our kernel does not take: ``rope=True`` is ignored.",
    ),
}
MODEL_SPECS.update(VISION_LANGUAGE_SPECS)
ALIASES.update(
    {
        "mllama_text_model": "mllama",
        "qwen2_vl_text": "qwen2_vl",
        "qwen2_5_vl_text": "qwen2_5_vl",
        "qwen3_vl_text": "qwen3_vl",
        "llama4_text": "llama4",
    }
)


def spec_for(model_type):
    """The table entry for a ``config.model_type`` (aliases resolved), or None."""
    return MODEL_SPECS.get(ALIASES.get(model_type, model_type))
