"""``LigerCrossEntropyLoss``: a drop-in for ``nn.CrossEntropyLoss`` with z-loss, softcap and token
accuracy, running the fused cross-entropy kernel."""

from dataclasses import dataclass

import torch
import torch.nn as nn

from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction, check_ce_options


@dataclass
class CrossEntropyOutput:
    """What the losses return when an extra output is requested (fields not requested are None).

    ``loss``: the reduced loss (fp32). ``z_loss``: its z-loss part, reduced the same way.
    ``token_accuracy``: fraction of non-ignored tokens whose argmax is the label (a scalar).
    ``predicted_tokens``: argmax per token (int64), ``ignore_index`` at ignored tokens.
    """

    loss: torch.Tensor
    z_loss: torch.Tensor | None = None
    token_accuracy: torch.Tensor | None = None
    predicted_tokens: torch.Tensor | None = None


def pack_outputs(outputs, return_z_loss, return_token_accuracy, return_predicted_tokens):
    """The loss tensor alone, or a ``CrossEntropyOutput`` when any extra output was requested."""
    if return_z_loss or return_token_accuracy or return_predicted_tokens:
        return CrossEntropyOutput(*outputs)
    return outputs[0]


class LigerCrossEntropyLoss(nn.Module):
    """Cross-entropy of logits [BT, V] against labels [BT]; options as ``F.cross_entropy`` plus
    z-loss (``lse_square_scale``), tanh ``softcap`` and token accuracy / predicted tokens.

    The gradient overwrites the logits buffer during the forward (no logits-sized allocation): the
    logits must not be read again after the loss when training.
    """

    def __init__(
        self,
        weight=None,
        ignore_index=-100,
        lse_square_scale=0.0,
        label_smoothing=0.0,
        reduction="mean",
        softcap=None,
        return_z_loss=False,
        return_token_accuracy=False,
        return_predicted_tokens=False,
    ):
        super().__init__()
        check_ce_options(ignore_index, lse_square_scale, label_smoothing, reduction, softcap)
        self.weight = weight
        self.ignore_index = ignore_index
        self.lse_square_scale = lse_square_scale
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.softcap = softcap
        self.return_z_loss = return_z_loss
        self.return_token_accuracy = return_token_accuracy
        self.return_predicted_tokens = return_predicted_tokens

    def forward(self, _input, target):
        outputs = LigerCrossEntropyFunction.apply(
            _input,
            target,
            self.weight,
            self.ignore_index,
            self.lse_square_scale,
            self.label_smoothing,
            self.reduction,
            self.softcap,
            self.return_z_loss,
            self.return_token_accuracy,
            self.return_predicted_tokens,
        )
        return pack_outputs(outputs, self.return_z_loss, self.return_token_accuracy, self.return_predicted_tokens)
