"""SwiGLU MLPs of Llama-style models, running the fused ``silu(gate) * up`` kernel."""

import torch.nn as nn

from liger_kernel.ops.swiglu import LigerSiLUMulFunction

SILU_NAMES = ("silu", "swish")


def _check_activation(config) -> None:
    if config.hidden_act not in SILU_NAMES:
        raise ValueError(f"config.hidden_act must be one of {SILU_NAMES} for a SwiGLU MLP, got {config.hidden_act!r}.")


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
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(LigerSiLUMulFunction.apply(gate, up, True))
