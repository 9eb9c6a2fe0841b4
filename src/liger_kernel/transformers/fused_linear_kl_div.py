"""``LigerFusedLinearKLDivLoss``: KL of a student head against teacher probabilities, without logits."""

import torch.nn as nn

from liger_kernel.ops import library_losses  # noqa: F401  (registers the loss ops that apply_of routes to)
from liger_kernel.ops.divergence import check_reduction, check_temperature
from liger_kernel.ops.fused_linear_kl_div import LigerFusedLinearKLDivFunction
from liger_kernel.ops.library import apply_of


class LigerFusedLinearKLDivLoss(nn.Module):
    """``forward(student_input, student_weight, target, shift_labels=None)``: ``F.kl_div`` of
    ``log_softmax(student_input @ student_weight.T / T)`` against the teacher's probabilities
    ``target`` [BT, V], per row, without the student's ``[BT, V]`` logits; ``reduction`` "none"
    (per row), "sum", "mean" or "batchmean" over the rows whose ``shift_labels`` is not
    ``ignore_index``. See ``ops/fused_linear_kl_div.py``."""

    def __init__(
        self,
        reduction: str = "batchmean",
        ignore_index: int = -100,
        temperature: float = 1.0,
        eps: float = 1e-10,
        accum_dtype=None,
    ):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.temperature = check_temperature(temperature)
        self.ignore_index = ignore_index
        self.eps = eps
        self.accum_dtype = accum_dtype

    def forward(self, student_input, student_weight, target, shift_labels=None):
        return apply_of(LigerFusedLinearKLDivFunction, "fused_linear_kl_div")(
            student_input, student_weight, target, shift_labels, self.reduction, self.ignore_index,
            self.temperature, self.eps, self.accum_dtype,
        )  # fmt: skip
