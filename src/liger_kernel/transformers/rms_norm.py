"""RMSNorm module, a drop-in for Hugging Face's ``LlamaRMSNorm`` (and, with ``offset=1.0,
casting_mode="gemma", init_fn="zeros"``, ``GemmaRMSNorm``)."""

import torch
import torch.nn as nn

from liger_kernel.ops.rms_norm import LigerRMSNormFunction, casting_mode_name

INIT_FNS = ("ones", "zeros")


class LigerRMSNorm(nn.Module):
    """RMSNorm over the last dimension: ``(hidden_states [..., hidden_size]) -> same shape``.

    ``weight`` starts at ones or zeros (``init_fn``; Gemma stores ``w`` of ``1 + w`` and starts
    at zeros); with ``elementwise_affine=False`` there is no weight. See
    ``LigerRMSNormFunction`` for ``casting_mode``, ``in_place`` and ``row_mode``.
    """

    def __init__(
        self,
        hidden_size,
        eps=1e-6,
        offset=0.0,
        casting_mode="llama",
        init_fn="ones",
        in_place=True,
        row_mode=None,
        elementwise_affine=True,
    ):
        super().__init__()
        if init_fn not in INIT_FNS:
            raise ValueError(f"`init_fn` must be one of {INIT_FNS}, got {init_fn!r}.")
        self.hidden_size = hidden_size
        self.variance_epsilon = eps
        self.offset = offset
        self.casting_mode = casting_mode_name(casting_mode)
        self.in_place = in_place
        self.row_mode = row_mode
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            fill = torch.ones if init_fn == "ones" else torch.zeros
            self.weight = nn.Parameter(fill(hidden_size))
        else:
            self.register_parameter("weight", None)

    def forward(self, hidden_states):
        return LigerRMSNormFunction.apply(
            hidden_states,
            self.weight,
            self.variance_epsilon,
            self.offset,
            self.casting_mode,
            self.in_place,
            self.row_mode,
        )

    def extra_repr(self):
        return (
            f"{self.hidden_size}, eps={self.variance_epsilon}, offset={self.offset}, "
            f"casting_mode={self.casting_mode!r}, in_place={self.in_place}, "
            f"elementwise_affine={self.elementwise_affine}"
        )
