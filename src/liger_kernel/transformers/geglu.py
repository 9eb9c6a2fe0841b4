"""GeGLU MLP of Gemma-family models, running the fused MLP Function (``gelu_tanh(gate) * up`` kernel)."""

import torch.nn as nn

from liger_kernel.transformers.swiglu import gated_mlp, init_projections


class LigerGEGLUMLP(nn.Module):
    """``down_proj(gelu_tanh(gate_proj(x)) * up_proj(x))``. Gemma configs name the activation
    ``gelu_pytorch_tanh``; the tanh approximation is used whatever the config says, as Gemma does."""

    activation = "gelu_tanh"  # the gated kernels' name for it (the tiled forward reads it too)

    def __init__(self, config):
        super().__init__()
        init_projections(self, config)

    def forward(self, x):
        # LigerGEGLUMLP's, not self's: the structural patcher runs this forward on stock MLPs too
        return gated_mlp(x, self.gate_proj, self.up_proj, self.down_proj, LigerGEGLUMLP.activation)


def _gemma4_width(config, layer_idx) -> int:
    """Gemma 4's MLP is twice as wide in the layers that reuse another layer's KV cache when
    ``config.use_double_wide_mlp`` (``Gemma4TextMLP``); ``layer_idx=None`` gives the normal width.
    transformers 5.24 names those layers in ``config.kv_sharing_modes``; 5.17 had none and took the
    last ``num_kv_shared_layers`` layers."""
    if layer_idx is None or not getattr(config, "use_double_wide_mlp", False):
        return config.intermediate_size
    modes = getattr(config, "kv_sharing_modes", None)
    if modes is not None:
        shared = modes[layer_idx] == "reuse"
    else:
        first_shared = config.num_hidden_layers - config.num_kv_shared_layers
        shared = layer_idx >= first_shared > 0
    return config.intermediate_size * (2 if shared else 1)


class LigerGEGLUMLPForGemma4(LigerGEGLUMLP):
    """Gemma 4's text MLP (``Gemma4TextMLP(config, layer_idx)``), double-wide where Gemma 4 is."""

    def __init__(self, config, layer_idx=None):
        nn.Module.__init__(self)  # LigerGEGLUMLP(config) keeps the peer's signature: no width argument
        init_projections(self, config, _gemma4_width(config, layer_idx))
        self.layer_idx = layer_idx
