"""KTO (TRL's ``KTOTrainer.kto_loss``, ``loss_type="kto"``) on the fused head: see
``fused_linear_unpaired_preference``."""

import torch

from liger_kernel.chunked_loss.fused_linear_unpaired_preference import LigerFusedLinearUnpairedPreferenceBase


class LigerFusedLinearKTOFunction(LigerFusedLinearUnpairedPreferenceBase):
    @staticmethod
    def preference_loss_fn(
        log_prob_chunk, preference_labels_chunk, full_target, ref_log_prob_chunk=None, beta=0.1, kl=None
    ):
        """``1 - sigmoid(beta (logratio - kl))`` for desirable sequences, ``1 - sigmoid(beta (kl -
        logratio))`` for undesirable ones (``logratio = logp - ref_logp``; no reference: 0; no
        ``kl``: 0), summed and divided by the batch's sequence count; returns ``(loss,
        chosen_rewards_sum, rejected_rewards_sum)``, the sums of ``beta * logratio``."""
        logratios = log_prob_chunk if ref_log_prob_chunk is None else log_prob_chunk - ref_log_prob_chunk
        kl = 0.0 if kl is None else kl
        labels = preference_labels_chunk.bool()
        losses = torch.where(
            labels, 1 - torch.sigmoid(beta * (logratios - kl)), 1 - torch.sigmoid(beta * (kl - logratios))
        )
        rewards = (beta * logratios).detach()
        return losses.sum() / full_target.shape[0], (rewards * labels).sum(), (rewards * ~labels).sum()

    @classmethod
    def forward(
        cls,
        ctx,
        _input,
        weight,
        target,
        preference_labels,
        bias=None,
        ref_input=None,
        ref_weight=None,
        ref_bias=None,
        kl=None,
        ignore_index=-100,
        beta=0.1,
        compiled=True,
        use_ref_model=True,
        average_log_prob=False,
        chunk_size=1,
    ):
        """Returns ``(loss, (chosen_logps_sum, rejected_logps_sum, chosen_logits_sum,
        rejected_logits_sum, chosen_rewards_sum, rejected_rewards_sum))``, as TRL's KTO trainer
        unpacks it; ``kl`` (a detached scalar or [1] tensor) shifts the log-ratios."""
        return super().forward(
            cls=cls, ctx=ctx, _input=_input, weight=weight, target=target, preference_labels=preference_labels,
            bias=bias, ignore_index=ignore_index, use_ref_model=use_ref_model, ref_input=ref_input,
            ref_weight=ref_weight, ref_bias=ref_bias, average_log_prob=average_log_prob, beta=beta, kl=kl,
        )  # fmt: skip

    @staticmethod
    def backward(ctx, *grad_output):
        grads = LigerFusedLinearUnpairedPreferenceBase.backward(ctx, *grad_output)[:5]
        return *grads, *[None] * 10


class LigerFusedLinearKTOLoss(torch.nn.Module):
    """KTO on the fused head; ``forward(_input, lin_weight, target, bias=None,
    preference_labels=None, ref_input=None, ref_weight=None, ref_bias=None, kl=None)``."""

    def __init__(
        self, ignore_index=-100, beta=0.1, compiled=True, use_ref_model=False, average_log_prob=False, chunk_size=1
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.beta = beta
        self.compiled = compiled
        self.use_ref_model = use_ref_model
        self.average_log_prob = average_log_prob
        self.chunk_size = chunk_size

    def forward(
        self,
        _input,
        lin_weight,
        target,
        bias=None,
        preference_labels=None,
        ref_input=None,
        ref_weight=None,
        ref_bias=None,
        kl=None,
    ):
        return LigerFusedLinearKTOFunction.apply(
            _input, lin_weight, target, preference_labels, bias, ref_input, ref_weight, ref_bias, kl,
            self.ignore_index, self.beta, self.compiled, self.use_ref_model, self.average_log_prob, self.chunk_size,
        )  # fmt: skip
