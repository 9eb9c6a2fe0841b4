"""CPO (TRL's ``CPOTrainer.cpo_loss``, sigmoid type) on the fused head: see
``fused_linear_preference``."""

import torch
import torch.nn.functional as F

from liger_kernel.chunked_loss.fused_linear_preference import LigerFusedLinearPreferenceBase


def smoothed_sigmoid_loss(logits, label_smoothing, full_target):
    """``-logsigmoid(logits) (1 - eps) - logsigmoid(-logits) eps`` summed, over the pair count."""
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return losses.sum() / (full_target.shape[0] // 2)


class LigerFusedLinearCPOFunction(LigerFusedLinearPreferenceBase):
    @staticmethod
    def preference_loss_fn(chosen_logps, rejected_logps, full_target, beta=0.1, label_smoothing=0.0):
        """Returns ``(loss, chosen_rewards, rejected_rewards)``, rewards ``beta * logps`` [B]."""
        loss = smoothed_sigmoid_loss(beta * (chosen_logps - rejected_logps), label_smoothing, full_target)
        return loss, (beta * chosen_logps).detach(), (beta * rejected_logps).detach()

    @classmethod
    def forward(
        cls,
        ctx,
        _input,
        weight,
        target,
        bias=None,
        ignore_index=-100,
        beta=0.1,
        alpha=1.0,
        label_smoothing=0.0,
        compute_nll_loss=True,
        compiled=True,
        average_log_prob=False,
        chunk_size=1,
    ):
        """Loss ``preference_loss + alpha * nll_loss``. Returns ``(loss, (chosen_logps,
        rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss, chosen_rewards,
        rejected_rewards))``."""
        return super().forward(
            cls=cls, ctx=ctx, _input=_input, weight=weight, target=target, bias=bias, ignore_index=ignore_index,
            alpha=alpha, beta=beta, compute_nll_loss=compute_nll_loss, average_log_prob=average_log_prob,
            label_smoothing=label_smoothing,
        )  # fmt: skip

    @staticmethod
    def backward(ctx, *grad_output):
        grads = LigerFusedLinearPreferenceBase.backward(ctx, *grad_output)[:4]
        return *grads, *[None] * 8


class LigerFusedLinearCPOLoss(torch.nn.Module):
    """CPO on the fused head; ``forward(lin_weight, _input, target, bias=None)``."""

    def __init__(
        self,
        ignore_index=-100,
        beta=0.1,
        alpha=1.0,
        label_smoothing=0.0,
        compute_nll_loss=True,
        compiled=True,
        average_log_prob=False,
        chunk_size=1,
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.beta = beta
        self.alpha = alpha
        self.label_smoothing = label_smoothing
        self.compute_nll_loss = compute_nll_loss
        self.compiled = compiled
        self.average_log_prob = average_log_prob
        self.chunk_size = chunk_size

    def forward(self, lin_weight, _input, target, bias=None):
        return LigerFusedLinearCPOFunction.apply(
            _input, lin_weight, target, bias, self.ignore_index, self.beta, self.alpha, self.label_smoothing,
            self.compute_nll_loss, self.compiled, self.average_log_prob, self.chunk_size,
        )  # fmt: skip
