"""``LigerFusedLinearCrossEntropyLoss``: the ``lm_head`` projection and the cross-entropy in one,
without the ``[BT, V]`` logits."""

import torch.nn as nn

from liger_kernel.ops.cross_entropy import check_ce_options
from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
from liger_kernel.transformers.cross_entropy import pack_outputs


class LigerFusedLinearCrossEntropyLoss(nn.Module):
    """``cross_entropy(_input @ lin_weight.T + bias, target)`` for ``_input`` [BT, H],
    ``lin_weight`` [V, H], ``target`` [BT]. Options as ``LigerCrossEntropyLoss`` plus
    ``accum_dtype`` (dtype in which the weight gradient is accumulated over token chunks) and
    ``use_token_scaling``. Returns the loss, or a ``CrossEntropyOutput`` when an extra output is
    requested. Note the argument order of ``forward``: the weight comes first.
    """

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
        check_ce_options(ignore_index, lse_square_scale, label_smoothing, reduction, softcap)
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.lse_square_scale = lse_square_scale
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.softcap = softcap
        self.return_z_loss = return_z_loss
        self.accum_dtype = accum_dtype
        self.use_token_scaling = use_token_scaling
        self.return_token_accuracy = return_token_accuracy
        self.return_predicted_tokens = return_predicted_tokens

    def forward(self, lin_weight, _input, target, bias=None):
        outputs = LigerFusedLinearCrossEntropyFunction.apply(
            _input,
            lin_weight,
            target,
            bias,
            self.ce_weight,
            self.ignore_index,
            self.lse_square_scale,
            self.label_smoothing,
            self.reduction,
            self.softcap,
            self.return_z_loss,
            self.accum_dtype,
            self.use_token_scaling,
            self.return_token_accuracy,
            self.return_predicted_tokens,
        )
        return pack_outputs(outputs, self.return_z_loss, self.return_token_accuracy, self.return_predicted_tokens)
