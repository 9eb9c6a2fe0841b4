"""``LigerKLDIVLoss``: ``nn.KLDivLoss`` on the fused KL kernels."""

import torch.nn as nn

from liger_kernel.ops import library_losses  # noqa: F401  (registers the loss ops that apply_of routes to)
from liger_kernel.ops.divergence import check_reduction
from liger_kernel.ops.kl_div import LigerKLDivLossFunction
from liger_kernel.ops.library import apply_of


class LigerKLDIVLoss(nn.KLDivLoss):
    """``nn.KLDivLoss(size_average=None, reduce=None, reduction="mean", log_target=False)`` (its
    arguments after ``eps``) computed by ``LigerKLDivLossFunction``: ``forward(y_pred, y_true)``
    with ``y_pred`` log-probabilities and ``y_true`` probabilities (log-probabilities with
    ``log_target=True``); ``eps`` bounds the log of the target (see ``ops/kl_div.py``)."""

    def __init__(self, eps: float = 1e-10, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_reduction(self.reduction)
        self.eps = eps

    def forward(self, y_pred, y_true):
        return apply_of(LigerKLDivLossFunction, "kl_div")(y_pred, y_true, self.reduction, self.log_target, self.eps)
