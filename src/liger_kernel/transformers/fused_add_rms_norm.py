"""``LigerFusedAddRMSNorm``: a pre-norm layer's residual add and the RMSNorm after it, one kernel."""

from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
from liger_kernel.ops.library import apply_of
from liger_kernel.transformers.rms_norm import LigerRMSNorm


class LigerFusedAddRMSNorm(LigerRMSNorm):
    """``forward(hidden_states, residual) -> (normed, summed)``: ``summed = hidden_states +
    residual`` (the new residual stream) and its RMSNorm, in hidden_states' dtype. Numerics,
    parameters and state_dict as ``LigerRMSNorm`` with the same arguments (``weight``,
    ``variance_epsilon``, ``offset``, ``casting_mode``).

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
        super().__init__(
            hidden_size, eps, offset, casting_mode, init_fn, in_place, grad_output_unshared=grad_output_unshared
        )

    def forward(self, hidden_states, residual):
        return apply_of(LigerFusedAddRMSNormFunction, "fused_add_rms_norm")(
            hidden_states,
            residual,
            self.weight,
            self.variance_epsilon,
            self.offset,
            self.casting_mode,
            self.in_place,
            self.grad_output_unshared,
        )
