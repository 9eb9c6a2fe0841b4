"""LayerNorm module, a drop-in for ``torch.nn.LayerNorm`` over the last dimension."""

import torch
import torch.nn as nn

from liger_kernel.ops.layer_norm import LigerLayerNormFunction

INIT_FNS = ("ones", "zeros")


class LigerLayerNorm(nn.Module):
    """LayerNorm over the last dimension: ``(hidden_states [..., hidden_size]) -> same shape``.

    ``weight`` starts at ones or zeros (``init_fn``). ``bias`` is always a parameter (zeros at
    the start), so the state dict of an ``nn.LayerNorm`` with bias loads as it is; the ``bias``
    flag is kept for API compatibility and changes nothing.
    """

    def __init__(self, hidden_size, eps=1e-6, bias=False, init_fn="ones"):
        super().__init__()
        if init_fn not in INIT_FNS:
            raise ValueError(f"`init_fn` must be one of {INIT_FNS}, got {init_fn!r}.")
        self.hidden_size = hidden_size
        self.eps = eps
        fill = torch.ones if init_fn == "ones" else torch.zeros
        self.weight = nn.Parameter(fill(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    @property
    def variance_epsilon(self):
        return self.eps

    def forward(self, hidden_states):
        return LigerLayerNormFunction.apply(hidden_states, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.hidden_size}, eps={self.eps}"
