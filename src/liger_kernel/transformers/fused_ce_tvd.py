"""``LigerFusedCETVDLoss``: cross-entropy and total variation distance from one read of the logits."""

import torch.nn as nn

from liger_kernel.ops import library_losses  # noqa: F401  (registers the loss ops that apply_of routes to)
from liger_kernel.ops.fused_ce_tvd import LigerFusedCETVDFunction
from liger_kernel.ops.library import apply_of


class LigerFusedCETVDLoss(nn.Module):
    """``forward(student_logits, teacher_logits, target)`` -> ``(ce, tvd)``: the mean cross-entropy
    of the student's logits [BT, V] against ``target`` [BT] and the mean total variation distance
    of the student's and the teacher's softmax, both over the tokens not at ``ignore_index``; weigh
    and add them as the training recipe says. See ``ops/fused_ce_tvd.py``."""

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, student_logits, teacher_logits, target):
        return apply_of(LigerFusedCETVDFunction, "fused_ce_tvd")(
            student_logits, teacher_logits, target, self.ignore_index
        )
