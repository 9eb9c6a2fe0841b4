"""DPO and its variants (TRL's ``DPOTrainer.dpo_loss``) on the fused head: see
``fused_linear_preference`` for the layout, the passes and the outputs."""

import math

import torch
import torch.nn.functional as F

from liger_kernel.chunked_loss.fused_linear_preference import LigerFusedLinearPreferenceBase

DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
    "discopop",
)  # fmt: skip


def check_loss_type(loss_type):
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"`loss_type` must be one of {DPO_LOSS_TYPES}, got {loss_type!r}.")


class LigerFusedLinearDPOFunction(LigerFusedLinearPreferenceBase):
    @staticmethod
    def preference_loss_fn(
        chosen_logps,
        rejected_logps,
        full_target,
        ref_chosen_logps=None,
        ref_rejected_logps=None,
        beta=0.1,
        loss_type="sigmoid",
        label_smoothing=0.0,
        discopop_tau=0.05,
    ):
        """TRL's formulas per pair, summed over the given pairs and divided by the batch's pair
        count; returns ``(loss, chosen_rewards, rejected_rewards)`` (rewards ``beta * (logp -
        ref_logp)``, detached). Without a reference its log-probs are 0. ``bco_pair``'s shift is
        the mean of this batch's rewards (TRL keeps a running mean over steps instead: the same on
        the first step). ``exo_pair`` with ``label_smoothing=0`` uses 1e-3, as TRL does."""
        chosen_logratios = chosen_logps if ref_chosen_logps is None else chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps if ref_rejected_logps is None else rejected_logps - ref_rejected_logps
        logits = chosen_logratios - rejected_logratios
        eps = label_smoothing
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
        elif loss_type == "robust":
            losses = (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)
        elif loss_type == "exo_pair":
            eps = eps or 1e-3
            losses = (beta * logits).sigmoid() * (F.logsigmoid(beta * logits) - math.log(1 - eps)) + (
                -beta * logits
            ).sigmoid() * (F.logsigmoid(-beta * logits) - math.log(eps))
        elif loss_type == "hinge":
            losses = torch.relu(1 - beta * logits)
        elif loss_type == "ipo":
            losses = (logits - 1 / (2 * beta)) ** 2
        elif loss_type == "bco_pair":
            shift = torch.cat((beta * chosen_logratios, beta * rejected_logratios)).mean().detach()
            losses = -F.logsigmoid(beta * chosen_logratios - shift) - F.logsigmoid(-(beta * rejected_logratios - shift))
        elif loss_type == "sppo_hard":
            losses = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
        elif loss_type == "nca_pair":
            chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
            losses = (
                -F.logsigmoid(chosen_rewards)
                - 0.5 * F.logsigmoid(-chosen_rewards)
                - 0.5 * F.logsigmoid(-rejected_rewards)
            )
        elif loss_type == "apo_zero":
            losses = 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)
        elif loss_type == "apo_down":
            losses = torch.sigmoid(beta * chosen_logratios) + 1 - torch.sigmoid(beta * logits)
        elif loss_type == "discopop":
            scaled = beta * logits
            modulation = torch.sigmoid(scaled / discopop_tau)
            losses = -F.logsigmoid(scaled) * (1 - modulation) + torch.exp(-scaled) * modulation
        else:
            check_loss_type(loss_type)
        loss = losses.sum() / (full_target.shape[0] // 2)
        return loss, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach()

    @classmethod
    def couples_batch(cls, loss_kwargs):
        return loss_kwargs.get("loss_type") == "bco_pair"

    @classmethod
    def forward(
        cls,
        ctx,
        _input,
        weight,
        target,
        bias=None,
        ref_input=None,
        ref_weight=None,
        ref_bias=None,
        ignore_index=-100,
        beta=0.1,
        compute_nll_loss=False,
        compiled=True,
        use_ref_model=True,
        average_log_prob=False,
        chunk_size=1,
        loss_type="sigmoid",
        label_smoothing=0.0,
        discopop_tau=0.05,
        alpha=1.0,
    ):
        """``_input`` [2B, T, H] (chosen first), ``weight`` [V, H], ``target`` [2B, T]; the
        reference head's ``ref_*`` when ``use_ref_model``. Returns ``(loss, (chosen_logps,
        rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss, chosen_rewards,
        rejected_rewards))``; ``compiled`` and ``chunk_size`` are not needed (kept for
        compatibility)."""
        check_loss_type(loss_type)
        return super().forward(
            cls=cls, ctx=ctx, _input=_input, weight=weight, target=target, bias=bias, ignore_index=ignore_index,
            alpha=alpha, beta=beta, compute_nll_loss=compute_nll_loss, use_ref_model=use_ref_model,
            ref_input=ref_input, ref_weight=ref_weight, ref_bias=ref_bias, average_log_prob=average_log_prob,
            loss_type=loss_type, label_smoothing=label_smoothing, discopop_tau=discopop_tau,
        )  # fmt: skip

    @staticmethod
    def backward(ctx, *grad_output):
        grads = LigerFusedLinearPreferenceBase.backward(ctx, *grad_output)[:4]
        return *grads, *[None] * 14


class LigerFusedLinearDPOLoss(torch.nn.Module):
    """DPO on the fused head (``LigerFusedLinearDPOFunction``); ``forward(lin_weight, _input,
    target, bias=None, ref_input=None, ref_weight=None, ref_bias=None)``."""

    def __init__(
        self,
        ignore_index=-100,
        beta=0.1,
        alpha=1.0,
        compute_nll_loss=False,
        compiled=True,
        use_ref_model=True,
        average_log_prob=False,
        chunk_size=1,
        loss_type="sigmoid",
        label_smoothing=0.0,
        discopop_tau=0.05,
    ):
        super().__init__()
        check_loss_type(loss_type)
        self.ignore_index = ignore_index
        self.beta = beta
        self.alpha = alpha
        self.compute_nll_loss = compute_nll_loss
        self.compiled = compiled
        self.use_ref_model = use_ref_model
        self.average_log_prob = average_log_prob
        self.chunk_size = chunk_size
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing
        self.discopop_tau = discopop_tau

    def forward(self, lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None):
        return LigerFusedLinearDPOFunction.apply(
            _input, lin_weight, target, bias, ref_input, ref_weight, ref_bias, self.ignore_index, self.beta,
            self.compute_nll_loss, self.compiled, self.use_ref_model, self.average_log_prob, self.chunk_size,
            self.loss_type, self.label_smoothing, self.discopop_tau, self.alpha,
        )  # fmt: skip
