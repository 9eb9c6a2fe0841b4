"""The declarative table of supported model families: the only place that knows about one.

Each entry names what the patcher swaps in ``transformers.models.<m>.modeling_<m>`` and the
numerics our kernels must reproduce there. Adding a family is adding an entry here (and a
convergence test), never writing a new patch function or forward.
"""

from dataclasses import dataclass

# MLP kinds: the Liger module that replaces the family's MLP and the activations it computes.
SWIGLU = "swiglu"  # gate_proj/up_proj/down_proj, silu(gate) * up
PHI3 = "phi3"  # one fused gate_up_proj, silu(gate) * up
GEGLU = "geglu"  # gate_proj/up_proj/down_proj, gelu_tanh(gate) * up


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


@dataclass(frozen=True)
class ModelSpec:
    """One model family.

    module: the modeling module whose symbols are swapped.
    causal_lm: the causal-LM class whose ``forward`` becomes the generic one.
    norms: RMSNorm class names (all share ``norm`` numerics; q/k norms included).
    mlps: dense MLP class names replaced by ``mlp_kind`` (MoE experts stay stock).
    activation: the config attribute naming the MLP activation.
    rope: the module-level RoPE function name.
    moe: whether the forward adds the router load-balancing loss (the module's
        ``load_balancing_loss_func``).
    note: a sentence for the family's ``apply_liger_kernel_to_*`` docstring.
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

    @property
    def mlp_flag(self) -> str:
        """The name of the MLP switch in this family's ``apply_liger_kernel_to_*``."""
        return "geglu" if self.mlp_kind == GEGLU else "swiglu"


GRANITE_NOTE = (
    "Granite defaults to the fused loss like every family here, where Liger Kernel 0.8.5 defaults it to "
    "``cross_entropy=True, fused_linear_cross_entropy=False`` (it has no fused forward for Granite): the generic "
    "forward divides the hidden states by ``logits_scaling`` before the fused loss, ``(h / s) W^T == (h W^T) / s``, "
    "so the loss is the stock one without the [B*T, V] logits. Pass ``cross_entropy=True, "
    "fused_linear_cross_entropy=False`` for the loss on logits."
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
    # Mixtral's experts are one fused 3-D parameter pair with routing inside: left stock.
    "mixtral": ModelSpec(_hf("mixtral"), "MixtralForCausalLM", ("MixtralRMSNorm",), LLAMA_NORM, (), SWIGLU, moe=True),
    "qwen2": ModelSpec(_hf("qwen2"), "Qwen2ForCausalLM", ("Qwen2RMSNorm",), LLAMA_NORM, ("Qwen2MLP",), SWIGLU),
    "qwen3": ModelSpec(_hf("qwen3"), "Qwen3ForCausalLM", ("Qwen3RMSNorm",), LLAMA_NORM, ("Qwen3MLP",), SWIGLU),
    # Qwen3MoeMLP is the dense MLP of `mlp_only_layers`; the experts stay stock.
    "qwen3_moe": ModelSpec(
        _hf("qwen3_moe"), "Qwen3MoeForCausalLM", ("Qwen3MoeRMSNorm",), LLAMA_NORM, ("Qwen3MoeMLP",), SWIGLU, moe=True
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
}
