"""``LigerVocabParallelCrossEntropy``: cross-entropy of vocabulary-parallel logits (each rank holds
``[..., V_r]``, its slice of the vocabulary; ops/vocab_parallel_cross_entropy.py has the math)."""

import torch

from liger_kernel.ops.cross_entropy import REDUCTIONS
from liger_kernel.ops.vocab_parallel_cross_entropy import LigerVocabParallelCEFunction, validate_formula_and_mode


class LigerVocabParallelCrossEntropy(torch.nn.Module):
    """``forward(vocab_parallel_logits, target, tp_group=None)``: the loss over the whole vocabulary
    (``tp_group`` None: the default group), per token (``reduction="none"``), summed, or the mean over
    non-ignored tokens. ``label_smoothing_formula`` "pytorch" or "megatron" and
    ``label_smoothing_mode`` "global" or "partition": see the op's docstring."""

    def __init__(
        self,
        ignore_index=-100,
        label_smoothing=0.0,
        reduction="none",
        label_smoothing_formula="pytorch",
        label_smoothing_mode="global",
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
        validate_formula_and_mode(label_smoothing_formula, label_smoothing_mode)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.label_smoothing_formula = label_smoothing_formula
        self.label_smoothing_mode = label_smoothing_mode

    def forward(self, vocab_parallel_logits, target, tp_group=None):
        loss = LigerVocabParallelCEFunction.apply(
            vocab_parallel_logits,
            target,
            tp_group,
            self.ignore_index,
            self.label_smoothing,
            self.label_smoothing_formula,
            self.label_smoothing_mode,
        )
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction == "mean":
            return loss.sum() / (target != self.ignore_index).sum().clamp(min=1)
        return loss
