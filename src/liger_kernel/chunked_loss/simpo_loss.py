"""SimPO (TRL's ``CPOTrainer.cpo_loss``, simpo type) on the fused head: see
``fused_linear_preference``."""

import torch

from liger_kernel.chunked_loss.cpo_loss import smoothed_sigmoid_loss
from liger_kernel.chunked_loss.fused_linear_preference import LigerFusedLinearPreferenceBase


class LigerFusedLinearSimPOFunction(LigerFusedLinearPreferenceBase):
    @staticmethod
    def preference_loss_fn(chosen_logps, rejected_logps, full_target, beta=0.1, gamma=0.5, label_smoothing=0.0):
        """Sigmoid loss of ``beta * (c - r) - gamma`` on average log-probs; returns ``(loss,
        chosen_rewards, rejected_rewards)``, rewards ``beta * logps`` [B]."""
        loss = smoothed_sigmoid_loss(beta * (chosen_logps - rejected_logps) - gamma, label_smoothing, full_target)
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
        compute_nll_loss=False,
        compiled=True,
        gamma=0.5,
        chunk_size=1,
    ):
        """Loss ``preference_loss + alpha * nll_loss`` on average log-probs. Returns ``(loss,
        (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss,
        chosen_rewards, rejected_rewards))``."""
        return super().forward(
            cls=cls, ctx=ctx, _input=_input, weight=weight, target=target, bias=bias, ignore_index=ignore_index,
            alpha=alpha, beta=beta, compute_nll_loss=compute_nll_loss, gamma=gamma, label_smoothing=label_smoothing,
        )  # fmt: skip

    @staticmethod
    def backward(ctx, *grad_output):
        grads = LigerFusedLinearPreferenceBase.backward(ctx, *grad_output)[:4]
        return *grads, *[None] * 8


class LigerFusedLinearSimPOLoss(torch.nn.Module):
    """SimPO on the fused head; ``forward(lin_weight, _input, target, bias=None)``."""

    def __init__(
        self,
        ignore_index=-100,
        beta=0.1,
        alpha=1.0,
        label_smoothing=0.0,
        compute_nll_loss=True,
        compiled=True,
        gamma=0.5,
        chunk_size=1,
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.beta = beta
        self.alpha = alpha
        self.label_smoothing = label_smoothing
        self.compute_nll_loss = compute_nll_loss
        self.compiled = compiled
        self.gamma = gamma
        self.chunk_size = chunk_size

    def forward(self, lin_weight, _input, target, bias=None):
        return LigerFusedLinearSimPOFunction.apply(
            _input, lin_weight, target, bias, self.ignore_index, self.beta, self.alpha, self.label_smoothing,
            self.compute_nll_loss, self.compiled, self.gamma, self.chunk_size,
        )  # fmt: skip
