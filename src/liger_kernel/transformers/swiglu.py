"""SwiGLU MLPs of Llama-style models, running the fused MLP Function (``silu(gate) * up`` kernel)."""

import torch
import torch.nn as nn
import torch.nn.modules.module as module_globals

from liger_kernel.ops.swiglu import LigerGatedMLPFunction, LigerSiLUMulFunction
from liger_kernel.utils import use_triton

SILU_NAMES = ("silu", "swish")
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _check_activation(config) -> None:
    if config.hidden_act not in SILU_NAMES:
        raise ValueError(f"config.hidden_act must be one of {SILU_NAMES} for a SwiGLU MLP, got {config.hidden_act!r}.")


def _has_hooks(obj, prefix="") -> bool:
    return any(getattr(obj, prefix + name, None) for name in _HOOK_DICTS)


def fusable(x: torch.Tensor, *projections: nn.Module) -> bool:
    """Whether the fused MLP Function may stand in for calling ``projections`` on ``x``.

    Only plain bias-free ``nn.Linear`` modules with plain weights of ``x``'s dtype and no hooks
    (PEFT's LoRA layers, quantized or parametrized Linears, ZeRO-3/offload hooks all take the
    unfused path, which calls the modules). Autocast and the PyTorch reference impl do too.
    """
    if not use_triton(x) or torch.is_autocast_enabled(x.device.type) or _has_hooks(module_globals, "_global"):
        return False
    return all(
        type(p) is nn.Linear
        and p.bias is None
        and type(p.weight) in (nn.Parameter, torch.Tensor)
        and p.weight.dtype == x.dtype
        and not _has_hooks(p)
        for p in projections
    )


class LigerSwiGLUMLP(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))``, the Llama/Mistral/Qwen MLP."""

    def __init__(self, config, intermediate_size=None):
        super().__init__()
        _check_activation(config)
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)

    def forward(self, x):
        if fusable(x, self.gate_proj, self.up_proj, self.down_proj):
            w = (self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
            return LigerGatedMLPFunction.apply(x, *w, "silu")
        # The projections' outputs are read by nothing else: their buffers take the gradients.
        return self.down_proj(LigerSiLUMulFunction.apply(self.gate_proj(x), self.up_proj(x), True))


class LigerPhi3SwiGLUMLP(nn.Module):
    """Phi-3's SwiGLU MLP with one fused ``gate_up_proj``; its two halves are used as strided views."""

    def __init__(self, config):
        super().__init__()
        _check_activation(config)
        self.config = config
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        if fusable(x, self.gate_up_proj, self.down_proj):
            return LigerGatedMLPFunction.apply(x, self.gate_up_proj.weight, None, self.down_proj.weight, "silu")
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(LigerSiLUMulFunction.apply(gate, up, True))
