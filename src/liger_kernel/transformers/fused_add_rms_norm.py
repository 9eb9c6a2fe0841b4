"""``LigerFusedAddRMSNorm``: a pre-norm layer's residual add and the RMSNorm after it, one kernel."""

import torch
import torch.nn as nn

from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
from liger_kernel.ops.rms_norm import casting_mode_name
from liger_kernel.transformers.rms_norm import INIT_FNS


class LigerFusedAddRMSNorm(nn.Module):
    """``forward(hidden_states, residual) -> (normed, summed)``: ``summed = hidden_states +
    residual`` (the new residual stream) and its RMSNorm, in hidden_states' dtype. Numerics and
    parameters as ``LigerRMSNorm`` with the same arguments (``weight`` [hidden_size],
    ``variance_epsilon``, ``offset``, ``casting_mode``), so its state_dict loads into either.

    ``in_place`` (off by default) lets the backward reuse the normed output's gradient buffer, and
    only with ``grad_output_unshared=True``, the caller's word that nothing else reads it.
    """

    def __init__(
        self,
        hidden_size,
        eps=1e-6,
        offset=0.0,
        casting_mode="llama",
        init_fn="ones",
        in_place=False,
        grad_output_unshared=False,
    ):
        super().__init__()
        if init_fn not in INIT_FNS:
            raise ValueError(f"`init_fn` must be one of {INIT_FNS}, got {init_fn!r}.")
        self.hidden_size = hidden_size
        self.variance_epsilon = eps
        self.offset = offset
        self.casting_mode = casting_mode_name(casting_mode)
        self.in_place = in_place
        self.grad_output_unshared = grad_output_unshared
        self.weight = nn.Parameter((torch.ones if init_fn == "ones" else torch.zeros)(hidden_size))

    def forward(self, hidden_states, residual):
        return LigerFusedAddRMSNormFunction.apply(
            hidden_states,
            residual,
            self.weight,
            self.variance_epsilon,
            self.offset,
            self.casting_mode,
            self.in_place,
            self.grad_output_unshared,
        )

    def extra_repr(self):
        return (
            f"{self.hidden_size}, eps={self.variance_epsilon}, offset={self.offset}, "
            f"casting_mode={self.casting_mode!r}, in_place={self.in_place}"
        )
