"""SwiGLU MLPs of Llama-style models, running the fused MLP Function (``silu(gate) * up`` kernel)."""

import torch
import torch.nn as nn
import torch.nn.modules.module as module_globals

from liger_kernel.ops.fused_moe import LigerFusedMoEFunction
from liger_kernel.ops.geglu import LigerGELUMulFunction
from liger_kernel.ops.library import apply_of, is_compiling
from liger_kernel.ops.swiglu import LigerFusedGateUpSiLUMulFunction, LigerGatedMLPFunction, LigerSiLUMulFunction
from liger_kernel.utils import use_triton

SILU_NAMES = ("silu", "swish")
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _check_activation(config, name="hidden_act") -> None:
    if getattr(config, name) not in SILU_NAMES:
        raise ValueError(f"config.{name} must be one of {SILU_NAMES} for a SwiGLU MLP, got {getattr(config, name)!r}.")


def _has_hooks(obj, prefix="") -> bool:
    return any(getattr(obj, prefix + name, None) for name in _HOOK_DICTS)


def fusable(x: torch.Tensor, *projections: nn.Module) -> bool:
    """Whether the fused MLP Function may stand in for calling ``projections`` on ``x``.

    Only plain bias-free ``nn.Linear`` modules with plain weights of ``x``'s dtype and no hooks
    (PEFT's LoRA layers, quantized or parametrized Linears, ZeRO-3/offload hooks all take the
    unfused path, which calls the modules). Autocast and the PyTorch reference impl do too, except
    under ``torch.compile``, where the fused MLP's ops pick the reference themselves.
    """
    if (
        not (is_compiling() or use_triton(x))
        or torch.is_autocast_enabled(x.device.type)
        or _has_hooks(module_globals, "_global")
    ):
        return False
    return all(
        type(p) is nn.Linear
        and p.bias is None
        and type(p.weight) in (nn.Parameter, torch.Tensor)
        and p.weight.dtype == x.dtype
        and not _has_hooks(p)
        for p in projections
    )


def gated_mlp(x, gate, up, down, activation="silu", gate_multiplier=1.0, down_multiplier=1.0):
    """``down(act(gate(x) * gate_multiplier) * up(x)) * down_multiplier`` for the projection
    modules ``gate``, ``up``, ``down`` (the multipliers are Falcon-H1's): the fused MLP Function
    where ``fusable``, else the modules around the gated Function, whose backward then writes
    the gradients over the projections' fresh outputs (read by nothing else). The multipliers go
    into the kernels, except around GeGLU's Function (no multipliers) and where ``down`` has a
    bias, which ``down_multiplier`` scales too."""
    if fusable(x, gate, up, down):
        weights = (gate.weight, up.weight, down.weight)
        return apply_of(LigerGatedMLPFunction, "gated_mlp")(x, *weights, activation, gate_multiplier, down_multiplier)
    a, b = gate(x), up(x)
    if activation == "silu" and getattr(down, "bias", None) is None:
        return down(apply_of(LigerSiLUMulFunction, "silu_mul")(a, b, gate_multiplier, down_multiplier))
    if activation == "silu":
        h = apply_of(LigerSiLUMulFunction, "silu_mul")(a, b, gate_multiplier)
    else:
        h = apply_of(LigerGELUMulFunction, "gelu_mul")(a if gate_multiplier == 1.0 else a * gate_multiplier, b)
    y = down(h)
    return y if down_multiplier == 1.0 else y * down_multiplier


def init_projections(mlp, config, intermediate_size=None, bias=False) -> None:
    """Give a gated MLP Hugging Face's attributes: ``config``, ``hidden_size``,
    ``intermediate_size`` and the ``gate_proj``, ``up_proj``, ``down_proj`` Linears."""
    mlp.config = config
    mlp.hidden_size = config.hidden_size
    mlp.intermediate_size = intermediate_size or config.intermediate_size
    mlp.gate_proj = nn.Linear(mlp.hidden_size, mlp.intermediate_size, bias=bias)
    mlp.up_proj = nn.Linear(mlp.hidden_size, mlp.intermediate_size, bias=bias)
    mlp.down_proj = nn.Linear(mlp.intermediate_size, mlp.hidden_size, bias=bias)


class LigerSwiGLUMLP(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))``, the Llama/Mistral/Qwen MLP."""

    activation = "silu"  # the gated kernels' name for it (the tiled forward reads it too)

    def __init__(self, config, intermediate_size=None):
        super().__init__()
        _check_activation(config, self.activation_key(config))
        init_projections(self, config, intermediate_size)

    def forward(self, x):
        return gated_mlp(x, self.gate_proj, self.up_proj, self.down_proj)

    @staticmethod
    def activation_key(config) -> str:
        """The config field naming the activation."""
        return "hidden_act"


class LigerQwen3MoeSwiGLUMLP(LigerSwiGLUMLP):
    """Qwen3-MoE's dense and shared-expert MLP (``Qwen3MoeMLP(config, intermediate_size=None)``):
    the Llama MLP, with the width given per instance."""


class LigerHunyuanV1SwiGLUMLP(LigerSwiGLUMLP):
    """HunYuan v1's MLP (``HunYuanDenseV1MLP(config, layer_idx=None, is_shared_mlp=False)``): the
    Llama MLP; ``layer_idx`` is kept as an attribute, ``is_shared_mlp`` changes nothing, as there."""

    def __init__(self, config, layer_idx=None, is_shared_mlp=False):
        super().__init__(config)
        self.layer_idx = layer_idx


class LigerSwiGLUMLPForMuseGlimmer(LigerSwiGLUMLP):
    """MuseGlimmer's text MLP, whose activation is ``config.hidden_activation`` (falling back to
    ``config.hidden_act`` when the config has none)."""

    def __init__(self, config):
        super().__init__(config)

    @staticmethod
    def activation_key(config) -> str:
        return "hidden_activation" if getattr(config, "hidden_activation", None) else "hidden_act"


class LigerFalconH1SwiGLUMLP(nn.Module):
    """Falcon-H1's MLP: ``down_proj(up_proj(x) * silu(gate_proj(x) * gate_multiplier)) *
    down_multiplier``, the multipliers from ``config.mlp_multipliers`` and applied inside the
    kernels; projections with a bias when ``config.mlp_bias``."""

    def __init__(self, config):
        super().__init__()
        _check_activation(config)
        init_projections(self, config, bias=getattr(config, "mlp_bias", False))
        self.gate_multiplier, self.down_multiplier = getattr(config, "mlp_multipliers", None) or (1.0, 1.0)

    def forward(self, x):
        projections = (self.gate_proj, self.up_proj, self.down_proj)
        return gated_mlp(x, *projections, "silu", self.gate_multiplier, self.down_multiplier)


class LigerBlockSparseTop2MLP(nn.Module):
    """One Mixtral expert as older transformers built it: ``w2(silu(w1(x)) * w3(x))`` with
    ``ffn_dim = config.intermediate_size`` and ``hidden_dim = config.hidden_size``."""

    def __init__(self, config):
        super().__init__()
        _check_activation(config)
        self.ffn_dim = config.intermediate_size
        self.hidden_dim = config.hidden_size
        self.w1 = nn.Linear(self.hidden_dim, self.ffn_dim, bias=False)
        self.w2 = nn.Linear(self.ffn_dim, self.hidden_dim, bias=False)
        self.w3 = nn.Linear(self.hidden_dim, self.ffn_dim, bias=False)

    def forward(self, x):
        return gated_mlp(x, self.w1, self.w3, self.w2)


class LigerPhi3SwiGLUMLP(nn.Module):
    """Phi-3's SwiGLU MLP with one fused ``gate_up_proj``; its two halves are used as strided views."""

    def __init__(self, config):
        super().__init__()
        _check_activation(config)
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        if fusable(x, self.gate_up_proj, self.down_proj):
            return apply_of(LigerGatedMLPFunction, "gated_mlp")(
                x, self.gate_up_proj.weight, None, self.down_proj.weight, "silu"
            )
        # The projection's output is read by nothing else: its buffer takes the gradient.
        return self.down_proj(
            apply_of(LigerFusedGateUpSiLUMulFunction, "fused_gate_up_silu_mul")(self.gate_up_proj(x), None)
        )


# ----------------------------------------------------------------------------- mixture-of-experts experts


class LigerExperts(nn.Module):
    """A drop-in for transformers 5.x's experts modules (``Qwen3MoeExperts``, ``MixtralExperts``,
    DeepSeek's, ``GptOssExperts``...): the whole block ``sum_k w * down(gating(gate_up(x)))`` as
    ``LigerFusedMoEFunction``.

    ``forward(hidden_states [T, H] (or [..., H]), top_k_index [T, K], top_k_weights [T, K])`` ->
    [T, H]. Parameters as transformers lays them out, so its checkpoints load unchanged:
    ``gate_up_proj[E, 2I, H]`` (gate rows, then up rows) and ``down_proj[E, H, I]``; for GPT-OSS
    (``model_type`` gpt_oss, or a config with ``swiglu_limit``) ``gate_up_proj[E, H, 2I]`` (gate and
    up interleaved), ``gate_up_proj_bias[E, 2I]``, ``down_proj[E, I, H]``, ``down_proj_bias[E, H]``
    and the clamped gating with ``swiglu_alpha`` / ``swiglu_limit`` (1.702 and 7.0 where the config
    has none). E is ``config.num_experts``, ``num_local_experts`` or ``n_routed_experts``; I is
    ``moe_intermediate_size`` or ``intermediate_size``; other activations than silu are rejected."""

    def __init__(self, config):
        super().__init__()
        _check_activation(config)
        self.config = config
        counts = (getattr(config, n, None) for n in ("num_experts", "num_local_experts", "n_routed_experts"))
        self.num_experts = next(count for count in counts if count is not None)
        self.hidden_dim = self.hidden_size = config.hidden_size
        self.intermediate_dim = self.intermediate_size = getattr(config, "moe_intermediate_size", None) or (
            config.intermediate_size
        )
        E, H, inter = self.num_experts, self.hidden_dim, self.intermediate_dim
        # GPT-OSS; older transformers (5.17) has no swiglu_alpha / swiglu_limit and uses these values.
        self.is_transposed = getattr(config, "model_type", None) == "gpt_oss" or hasattr(config, "swiglu_limit")
        if self.is_transposed:
            self.alpha = float(getattr(config, "swiglu_alpha", 1.702))
            self.limit = float(getattr(config, "swiglu_limit", 7.0))
            self.gate_up_proj = nn.Parameter(torch.empty(E, H, 2 * inter))
            self.gate_up_proj_bias = nn.Parameter(torch.empty(E, 2 * inter))
            self.down_proj = nn.Parameter(torch.empty(E, inter, H))
            self.down_proj_bias = nn.Parameter(torch.empty(E, H))
        else:
            self.alpha = self.limit = None
            self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * inter, H))
            self.down_proj = nn.Parameter(torch.empty(E, H, inter))
            self.gate_up_proj_bias = self.down_proj_bias = None

    def forward(self, hidden_states, top_k_index, top_k_weights):
        x = hidden_states.reshape(-1, self.hidden_dim)
        weights = [self.gate_up_proj, self.down_proj, self.gate_up_proj_bias, self.down_proj_bias]
        if torch.is_autocast_enabled(x.device.type):  # as F.linear under autocast: compute in its dtype
            dtype = torch.get_autocast_dtype(x.device.type)
            x, *weights = [None if t is None else t.to(dtype) for t in (x, *weights)]
        gate_up_proj, down_proj, gate_up_proj_bias, down_proj_bias = weights
        y = apply_of(LigerFusedMoEFunction, "fused_moe")(
            x, gate_up_proj, down_proj, top_k_index.reshape(x.shape[0], -1), top_k_weights.reshape(x.shape[0], -1),
            gate_up_proj_bias, down_proj_bias, self.is_transposed, not self.is_transposed, self.alpha, self.limit,
        )  # fmt: skip
        return y.view(*hidden_states.shape[:-1], self.hidden_dim)
