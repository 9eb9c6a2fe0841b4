"""Gated MLPs chosen by the config's activation: ``LigerMLP`` and Falcon-H1's ``LigerFalconH1MLP``.

SiLU and tanh-GELU run our fused kernels (the fused MLP Function where the projections allow,
else the gated Functions). An activation we have no kernel for (ReLU, ReLU^2, exact GELU) is
computed with plain torch ops inside ``LigerMLP``: still correct, not faster than eager.
"""

import torch.nn as nn
import torch.nn.functional as F

from liger_kernel.transformers.swiglu import SILU_NAMES, gated_mlp, init_projections

TANH_GELU_NAMES = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_python_tanh")
TORCH_ACTIVATIONS = {  # Hugging Face ACT2FN names without a kernel here
    "relu": F.relu,
    "relu2": lambda t: F.relu(t).square(),
    "gelu": F.gelu,
}


def _activation(config) -> str:
    name = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
    if name in SILU_NAMES:
        return "silu"
    if name in TANH_GELU_NAMES:
        return "gelu_tanh"
    if name in TORCH_ACTIVATIONS:
        return name
    known = SILU_NAMES + TANH_GELU_NAMES + tuple(TORCH_ACTIVATIONS)
    raise ValueError(f"config.hidden_act must be one of {known} for LigerMLP, got {name!r}.")


class LigerMLP(nn.Module):
    """``down_proj(act(gate_proj(x) * gate_multiplier) * up_proj(x)) * down_multiplier`` with
    ``act`` from ``config.hidden_act`` (or ``hidden_activation``); multipliers 1 here."""

    gate_multiplier = 1.0
    down_multiplier = 1.0

    def __init__(self, config):
        super().__init__()
        self.activation = _activation(config)
        init_projections(self, config, bias=getattr(config, "mlp_bias", False))

    def forward(self, x):
        projections = (self.gate_proj, self.up_proj, self.down_proj)
        if self.activation in TORCH_ACTIVATIONS:
            act = TORCH_ACTIVATIONS[self.activation]
            h = act(self.gate_proj(x) * self.gate_multiplier) * self.up_proj(x)
            return self.down_proj(h) * self.down_multiplier
        return gated_mlp(x, *projections, self.activation, self.gate_multiplier, self.down_multiplier)


class LigerFalconH1MLP(LigerMLP):
    """Falcon-H1's MLP (``FalconH1MLP``): ``LigerMLP`` with ``config.mlp_multipliers`` as
    ``(gate_multiplier, down_multiplier)``."""

    def __init__(self, config):
        super().__init__(config)
        self.gate_multiplier, self.down_multiplier = getattr(config, "mlp_multipliers", None) or (1.0, 1.0)
