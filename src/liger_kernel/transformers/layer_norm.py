"""LayerNorm module, a drop-in for ``torch.nn.LayerNorm`` over the last dimension."""

import torch
import torch.nn as nn

from liger_kernel.ops.layer_norm import LigerLayerNormFunction, layer_norm_reference
from liger_kernel.transformers.tensor_parallel import is_dtensor, norm_on_local_tensors

INIT_FNS = ("ones", "zeros")
# Implementations a module can pin (None: the process-wide selection, LIGER_KERNEL_IMPL).
IMPLS = ("triton", "torch")


def implementation_name(impl, backend):
    """``impl`` (or its older name ``backend``): None or one of ``IMPLS``."""
    if impl is not None and backend is not None and impl != backend:
        raise ValueError(f"`impl`={impl!r} and `backend`={backend!r} disagree: pass one of them.")
    name = impl if impl is not None else backend
    if name is not None and name not in IMPLS:
        raise ValueError(f"`impl` must be None or one of {IMPLS}, got {name!r}.")
    return name


class LigerLayerNorm(nn.Module):
    """LayerNorm over the last dimension: ``(hidden_states [..., hidden_size]) -> same shape``.

    ``weight`` starts at ones or zeros (``init_fn``). ``bias`` is always a parameter (zeros at
    the start), so the state dict of an ``nn.LayerNorm`` with bias loads as it is; the ``bias``
    flag is kept for API compatibility and changes nothing. ``impl="torch"`` pins this module to
    the PyTorch reference; None or ``"triton"`` runs ``LigerLayerNormFunction`` (the kernels,
    except under ``LIGER_KERNEL_IMPL=torch`` or on a CPU without Triton's interpreter, where it
    runs the reference). ``backend`` is ``impl``'s older name; ``mode`` must be None (one mode).
    """

    def __init__(self, hidden_size, eps=1e-6, bias=False, init_fn="ones", impl=None, mode=None, backend=None):
        super().__init__()
        if init_fn not in INIT_FNS:
            raise ValueError(f"`init_fn` must be one of {INIT_FNS}, got {init_fn!r}.")
        if mode is not None:
            raise ValueError(f"`mode` must be None: LayerNorm has one mode, got {mode!r}.")
        self.impl = implementation_name(impl, backend)
        self.mode = mode
        self.hidden_size = hidden_size
        self.eps = eps
        fill = torch.ones if init_fn == "ones" else torch.zeros
        self.weight = nn.Parameter(fill(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    @property
    def variance_epsilon(self):
        return self.eps

    def forward(self, hidden_states):
        if self.impl == "torch":
            return layer_norm_reference(hidden_states, self.weight, self.bias, self.eps)
        if is_dtensor(hidden_states) or is_dtensor(self.weight):  # tensor parallel
            return norm_on_local_tensors(
                LigerLayerNormFunction.apply, hidden_states, (self.weight, self.bias), self.eps
            )
        return LigerLayerNormFunction.apply(hidden_states, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.hidden_size}, eps={self.eps}" + (f", impl={self.impl!r}" if self.impl else "")
