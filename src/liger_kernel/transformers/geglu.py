"""GeGLU MLP of Gemma-family models, running the fused MLP Function (``gelu_tanh(gate) * up`` kernel)."""

import torch.nn as nn

from liger_kernel.ops.geglu import LigerGELUMulFunction
from liger_kernel.ops.swiglu import LigerGatedMLPFunction
from liger_kernel.transformers.swiglu import fusable


class LigerGEGLUMLP(nn.Module):
    """``down_proj(gelu_tanh(gate_proj(x)) * up_proj(x))``. Gemma configs name the activation
    ``gelu_pytorch_tanh``; the tanh approximation is used whatever the config says, as Gemma does."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)

    def forward(self, x):
        if fusable(x, self.gate_proj, self.up_proj, self.down_proj):
            w = (self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
            return LigerGatedMLPFunction.apply(x, *w, "gelu_tanh")
        return self.down_proj(LigerGELUMulFunction.apply(self.gate_proj(x), self.up_proj(x), True))
