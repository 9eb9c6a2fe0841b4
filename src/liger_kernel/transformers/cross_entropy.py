"""``LigerCrossEntropyLoss``: a drop-in for ``nn.CrossEntropyLoss`` with z-loss, softcap and token
accuracy, running the fused cross-entropy kernel."""

from dataclasses import dataclass

import torch
import torch.nn as nn

from liger_kernel.ops.cross_entropy import CEOptions, LigerCrossEntropyFunction
from liger_kernel.ops.library import apply_of


@dataclass
class CrossEntropyOutput:
    """What the losses return when an extra output is requested (fields not requested are None).

    ``loss``: the loss, reduced as asked. ``z_loss``: its z-loss part, reduced the same way.
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


def keep_options(module: nn.Module, **options) -> None:
    """A loss module's ``__init__``: check the options and keep each as an attribute of its name.
    They come in the order of the Function's arguments after the tensors (see ``apply_options``)."""
    CEOptions(**{name: value for name, value in options.items() if name in CEOptions._fields}).check()
    for name, value in options.items():
        setattr(module, name, value)
    module._option_names = tuple(options)


def apply_options(function, module: nn.Module, *tensors):
    """A loss module's ``forward``: ``function`` on the tensors and the module's current options,
    packed by ``pack_outputs``; under ``torch.compile``, the module's ``compiled_op`` instead."""
    options = (getattr(module, name) for name in module._option_names)
    outputs = apply_of(function, module.compiled_op)(*tensors, *options)
    return pack_outputs(outputs, module.return_z_loss, module.return_token_accuracy, module.return_predicted_tokens)


class LigerCrossEntropyLoss(nn.Module):
    """Cross-entropy of logits [BT, V] against labels [BT]; options as ``F.cross_entropy`` plus
    z-loss (``lse_square_scale``), tanh ``softcap`` and token accuracy / predicted tokens. The loss
    (and z-loss) comes in the logits' dtype, as ``F.cross_entropy``'s, computed in fp32; an
    all-ignored or empty batch gives 0 where PyTorch gives NaN.

    Memory as Liger's (no logits-sized allocation): the backward writes the gradient over the
    logits, after the autograd nodes recorded later than the loss have used them, and bumps their
    version, so that an earlier-recorded use of them raises rather than read a gradient. The logits
    are intact after the forward; after the backward they hold their gradient (pass
    ``logits.clone()`` to keep them), except logits owned by a leaf tensor or parameter, which are
    never written.
    """

    compiled_op = "cross_entropy"  # what ``torch.compile`` runs instead (``ops/library.py``)

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
        keep_options(
            self,
            weight=weight,
            ignore_index=ignore_index,
            lse_square_scale=lse_square_scale,
            label_smoothing=label_smoothing,
            reduction=reduction,
            softcap=softcap,
            return_z_loss=return_z_loss,
            return_token_accuracy=return_token_accuracy,
            return_predicted_tokens=return_predicted_tokens,
        )

    def forward(self, _input, target):
        return apply_options(LigerCrossEntropyFunction, self, _input, target)
