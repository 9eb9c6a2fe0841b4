"""TRL's ORPO trainer with the loss computed by ``LigerFusedLinearORPOLoss`` from the decoder's last
hidden states and the ``lm_head`` weight: the chosen/rejected log-probabilities, the odds-ratio term
and the chosen NLL come without the ``[2B, T, V]`` logits that TRL's ``concatenated_forward``
materializes (at V=128k, 2 x 4 x 1024 tokens: 4 GB of fp32 logits, plus their gradient)."""

import importlib

from liger_kernel.transformers.fsdp import _FSDPForwardRedirection, is_fsdp_wrapped


def _trl_orpo_trainer():
    """TRL's ORPOTrainer wherever the installed TRL keeps it (``trl.trainer`` up to 0.2x,
    ``trl.experimental.orpo`` since)."""
    try:
        import trl
    except ImportError as error:
        raise ImportError(
            "LigerORPOTrainer subclasses TRL's ORPOTrainer, and TRL is not installed: pip install trl"
        ) from error
    for path in ("trl.trainer.orpo_trainer", "trl.experimental.orpo"):
        try:
            return importlib.import_module(path).ORPOTrainer
        except ModuleNotFoundError as error:
            if error.name is None or not path.startswith(error.name):
                raise
    raise ImportError(
        f"TRL {trl.__version__} has no ORPOTrainer (looked in trl.trainer.orpo_trainer and trl.experimental.orpo)"
    )


ORPOTrainer = _trl_orpo_trainer()


class LigerORPOTrainer(ORPOTrainer):
    """``ORPOTrainer`` whose loss is the fused ORPO loss: same arguments, same logged metrics, except
    ``logits/chosen`` and ``logits/rejected``, the mean logit over the completion tokens (TRL's
    averages every position of the padded batch, prompt and padding included)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_encoder_decoder:
            raise ValueError(
                "LigerORPOTrainer supports decoder-only models; use trl's ORPOTrainer for encoder-decoders"
            )
        if self.aux_loss_enabled:
            raise ValueError(
                "LigerORPOTrainer does not add the MoE router auxiliary loss: set the model config's"
                " output_router_logits=False, or use trl's ORPOTrainer"
            )
        from liger_kernel.chunked_loss import LigerFusedLinearORPOLoss

        # TRL 0.24 has a configurable label_pad_token_id; later versions pad labels with -100.
        self.orpo_loss_fn = LigerFusedLinearORPOLoss(
            ignore_index=getattr(self, "label_pad_token_id", -100), beta=self.beta
        )

    def concatenated_forward(self, model, batch):
        """The fused loss on the concatenated chosen and rejected rows: ``(loss, aux_outputs)``, with
        ``aux_outputs`` as ``LigerFusedLinearORPOLoss`` returns them (chosen and rejected log-probs,
        their logits means, the chosen NLL, the rewards and the log-odds)."""
        label_pad = {"label_pad_token_id": self.label_pad_token_id} if hasattr(self, "label_pad_token_id") else {}
        concatenated = self.concatenated_inputs(
            batch,
            is_encoder_decoder=False,
            padding_value=self.padding_value,
            device=self.accelerator.device,
            **label_pad,
        )
        input_ids = concatenated["concatenated_input_ids"]
        attention_mask = concatenated["concatenated_attention_mask"]
        # NLL over the chosen prompt and response (TRL's choice), the odds ratio over the responses only.
        nll_target = input_ids.masked_fill(attention_mask == 0, self.orpo_loss_fn.ignore_index)[:, 1:]
        target = concatenated["concatenated_labels"][:, 1:]
        unwrapped = self.accelerator.unwrap_model(model)

        def fused_forward(input_ids, attention_mask, target, nll_target):
            hidden = unwrapped.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            head = unwrapped.get_output_embeddings()
            return self.orpo_loss_fn(
                head.weight, hidden.last_hidden_state[:, :-1], target, head.bias, nll_target=nll_target
            )

        if is_fsdp_wrapped(model):  # run inside FSDP's forward, so lm_head's weight is gathered
            return _FSDPForwardRedirection()(model, fused_forward, input_ids, attention_mask, target, nll_target)
        return fused_forward(input_ids, attention_mask, target, nll_target)

    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        """The ORPO loss and TRL's metrics, named as TRL names them."""
        loss, aux_outputs = self.concatenated_forward(model, batch)
        chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss = aux_outputs[:5]
        chosen_rewards, rejected_rewards, log_odds_ratio, log_odds_chosen = aux_outputs[5:9]
        gather = self.accelerator.gather_for_metrics
        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            "rewards/chosen": gather(chosen_rewards).mean(),
            "rewards/rejected": gather(rejected_rewards).mean(),
            "rewards/accuracies": gather((chosen_rewards > rejected_rewards).float()).mean(),
            "rewards/margins": gather(chosen_rewards - rejected_rewards).mean(),
            "logps/rejected": gather(rejected_logps.detach()).mean(),
            "logps/chosen": gather(chosen_logps.detach()).mean(),
            "logits/rejected": gather(rejected_logits_mean.detach()).mean(),
            "logits/chosen": gather(chosen_logits_mean.detach()).mean(),
            "nll_loss": gather(nll_loss.detach()).mean(),
            "log_odds_ratio": gather(log_odds_ratio.detach()).mean(),
            "log_odds_chosen": gather(log_odds_chosen.detach()).mean(),
        }
        return loss, {prefix + name: value.item() for name, value in metrics.items()}
