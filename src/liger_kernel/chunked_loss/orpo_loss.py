"""ORPO (TRL's ``ORPOTrainer.odds_ratio_loss``) on the fused head: see ``fused_linear_preference``."""

import torch
import torch.nn.functional as F

from liger_kernel.chunked_loss.fused_linear_preference import LigerFusedLinearPreferenceBase


class LigerFusedLinearORPOFunction(LigerFusedLinearPreferenceBase):
    @staticmethod
    def preference_loss_fn(chosen_logps, rejected_logps, full_target, beta=0.1):
        """``-beta * logsigmoid(log_odds)`` per pair (``log_odds = (c - r) - (log(1 - e^c) -
        log(1 - e^r))`` on average log-probs), summed and divided by the batch's pair count;
        returns ``(loss, chosen_rewards, rejected_rewards, log_odds_ratio, log_odds_chosen)``: the
        rewards ``beta * logps`` [B], the means of ``logsigmoid(log_odds)`` and of ``log_odds``."""
        log_odds = (chosen_logps - rejected_logps) - (
            torch.log(-torch.expm1(chosen_logps)) - torch.log(-torch.expm1(rejected_logps))
        )
        ratio = F.logsigmoid(log_odds)
        loss = -beta * ratio.sum() / (full_target.shape[0] // 2)
        chosen_rewards = (beta * chosen_logps).detach()
        rejected_rewards = (beta * rejected_logps).detach()
        return loss, chosen_rewards, rejected_rewards, ratio.mean().detach(), log_odds.mean().detach()

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
        compute_nll_loss=True,
        nll_target=None,
        compiled=True,
        chunk_size=1,
    ):
        """Loss ``nll_loss - mean(beta * logsigmoid(log_odds))`` on average log-probs; the NLL
        over the chosen tokens of ``nll_target`` (default ``target``). Returns ``(loss,
        (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss,
        chosen_rewards, rejected_rewards, log_odds_ratio, log_odds_chosen))``."""
        return super().forward(
            cls=cls, ctx=ctx, _input=_input, weight=weight, target=target, bias=bias, ignore_index=ignore_index,
            beta=beta, compute_nll_loss=compute_nll_loss, nll_target=nll_target,
        )  # fmt: skip

    @staticmethod
    def backward(ctx, *grad_output):
        grads = LigerFusedLinearPreferenceBase.backward(ctx, *grad_output)[:4]
        return *grads, *[None] * 6


class LigerFusedLinearORPOLoss(torch.nn.Module):
    """ORPO on the fused head; ``forward(lin_weight, _input, target, bias=None, nll_target=None)``."""

    def __init__(self, ignore_index=-100, beta=0.1, compute_nll_loss=True, compiled=True, chunk_size=1):
        super().__init__()
        self.ignore_index = ignore_index
        self.beta = beta
        self.compute_nll_loss = compute_nll_loss
        self.compiled = compiled
        self.chunk_size = chunk_size

    def forward(self, lin_weight, _input, target, bias=None, nll_target=None):
        return LigerFusedLinearORPOFunction.apply(
            _input, lin_weight, target, bias, self.ignore_index, self.beta, self.compute_nll_loss, nll_target,
            self.compiled, self.chunk_size,
        )  # fmt: skip
