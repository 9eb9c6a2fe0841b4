"""``LigerFusedLinearCrossEntropyLoss``: the ``lm_head`` projection and the cross-entropy in one,
without the ``[BT, V]`` logits."""

import torch.nn as nn

from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
from liger_kernel.transformers.cross_entropy import apply_options, keep_options


class LigerFusedLinearCrossEntropyLoss(nn.Module):
    """``cross_entropy(_input @ lin_weight.T + bias, target)`` for ``_input`` [BT, H],
    ``lin_weight`` [V, H], ``target`` [BT]. Options as ``LigerCrossEntropyLoss`` plus
    ``use_token_scaling`` and ``accum_dtype``: None (default) computes every gradient exactly
    (rounded once from fp32, about the weight gradient + input gradient + 64 MiB of extra memory);
    a dtype selects the faster token-chunk path that accumulates the weight gradient over chunks in
    it (``torch.bfloat16``: Liger Kernel 0.8.5's default). Returns the loss (in the input's dtype),
    or a ``CrossEntropyOutput`` when an extra output is requested. Note the argument order of
    ``forward``: the weight comes first.
    """

    compiled_op = "fused_linear_cross_entropy"  # what ``torch.compile`` runs instead (``ops/library.py``)

    def __init__(
        self,
        ce_weight=None,
        ignore_index=-100,
        lse_square_scale=0.0,
        label_smoothing=0.0,
        reduction="mean",
        softcap=None,
        return_z_loss=False,
        accum_dtype=None,
        use_token_scaling=False,
        return_token_accuracy=False,
        return_predicted_tokens=False,
    ):
        super().__init__()
        keep_options(
            self,
            ce_weight=ce_weight,
            ignore_index=ignore_index,
            lse_square_scale=lse_square_scale,
            label_smoothing=label_smoothing,
            reduction=reduction,
            softcap=softcap,
            return_z_loss=return_z_loss,
            accum_dtype=accum_dtype,
            use_token_scaling=use_token_scaling,
            return_token_accuracy=return_token_accuracy,
            return_predicted_tokens=return_predicted_tokens,
        )

    def forward(self, lin_weight, _input, target, bias=None):
        return apply_options(LigerFusedLinearCrossEntropyFunction, self, _input, lin_weight, target, bias)
