"""Causal-LM losses for patched models: the fused linear cross-entropy on hidden states
(no logits), and the cross-entropy kernel on logits (``cross_entropy=True``).

Both follow Hugging Face's ``ForCausalLMLoss`` conventions: labels are shifted left by one
(padding the end with ``ignore_index``) unless ``shift_labels`` is given, and with
``num_items_in_batch`` the loss is a sum divided by it, so that gradient accumulation over
micro-batches equals one big batch exactly.

Both go through the public functionals, looked up in ``liger_kernel.transformers.functional``
at each call: integrators wrap them there (Axolotl's ``liger_use_token_scaling`` replaces
``liger_fused_linear_cross_entropy`` with one that forces ``use_token_scaling=True``), so every
option is passed by keyword. The loss is fp32 (fp64 for fp64 inputs), as Hugging Face's upcast
logits give it: the fused loss is asked for it with ``loss_dtype``, a keyword that Axolotl's
replacement (``*args, **kwargs``) passes on.
"""

import torch
import torch.nn.functional as F

from liger_kernel.transformers import functional
from liger_kernel.transformers.cross_entropy import CrossEntropyOutput

# Options of the fused loss that ``fixed_fused_linear_cross_entropy`` takes from a caller's kwargs.
_FUSED_OPTIONS = ("bias", "ce_weight", "lse_square_scale", "label_smoothing", "use_token_scaling")


def shifted_targets(labels, shift_labels=None, ignore_index=-100):
    """The next-token target of every position, flattened to [B*T]."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return shift_labels.reshape(-1)


def _divide(loss, num_items_in_batch):
    if num_items_in_batch is None:
        return loss
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def unpack_cross_entropy_result(result):
    """``(loss, z_loss, token_accuracy, predicted_tokens)`` from what a Liger loss returned: the
    loss tensor alone, or a ``CrossEntropyOutput``."""
    if isinstance(result, CrossEntropyOutput):
        return result.loss, result.z_loss, result.token_accuracy, result.predicted_tokens
    return result, None, None, None


def fixed_fused_linear_cross_entropy(
    hidden_states,
    lm_head_weight,
    target,
    num_items_in_batch=None,
    ignore_index=-100,
    final_logit_softcapping=None,
    accum_dtype=None,
    return_token_accuracy=False,
    return_predicted_tokens=False,
    **kwargs,
):
    """The fused linear cross-entropy of hidden states [BT, H] and ``lm_head_weight`` [V, H]
    against already shifted targets [BT], with Hugging Face's reduction: the mean over
    non-ignored tokens, or the sum divided by ``num_items_in_batch``. ``kwargs`` may carry
    ``bias``, ``ce_weight``, ``lse_square_scale``, ``label_smoothing`` and ``use_token_scaling``;
    others are ignored, so a caller may pass its whole ``**kwargs``. Returns the loss (fp32 at
    least), or a ``CrossEntropyOutput`` when an extra output is requested."""
    options = {name: kwargs[name] for name in _FUSED_OPTIONS if name in kwargs}
    result = functional.liger_fused_linear_cross_entropy(
        hidden_states,
        lm_head_weight,
        target,
        ignore_index=ignore_index,
        reduction="sum" if num_items_in_batch is not None else "mean",
        softcap=final_logit_softcapping,
        accum_dtype=accum_dtype,
        return_token_accuracy=return_token_accuracy,
        return_predicted_tokens=return_predicted_tokens,
        loss_dtype=torch.promote_types(hidden_states.dtype, torch.float32),
        **options,
    )
    loss, z_loss, token_accuracy, predicted_tokens = unpack_cross_entropy_result(result)
    loss = _divide(loss, num_items_in_batch)
    if not (return_token_accuracy or return_predicted_tokens):
        return loss
    return CrossEntropyOutput(loss, z_loss, token_accuracy, predicted_tokens)


def LigerForCausalLMLoss(
    hidden_states,
    lm_head_weight,
    labels,
    hidden_size,
    num_items_in_batch=None,
    ignore_index=-100,
    shift_labels=None,
    final_logit_softcapping=None,
    return_token_accuracy=False,
    return_predicted_tokens=False,
    **kwargs,
):
    """Next-token loss straight from the last hidden states [B, T, H] and ``lm_head_weight``
    [V, H], through the fused linear cross-entropy: the [B*T, V] logits never exist.

    ``final_logit_softcapping`` caps logits as ``c * tanh(z / c)`` (Gemma 2/3). Extra keyword
    arguments the fused op understands are honoured (``use_token_scaling``, ``label_smoothing``,
    ``lse_square_scale``, ``accum_dtype``, ``bias`` for an lm_head bias); others are ignored, so
    a caller may pass its whole ``**kwargs``. Returns the loss, or a ``CrossEntropyOutput``
    (loss, z_loss, token_accuracy, predicted_tokens) when an extra output is requested.
    """
    target = shifted_targets(labels, shift_labels, ignore_index).to(hidden_states.device)
    return fixed_fused_linear_cross_entropy(
        hidden_states.reshape(-1, hidden_size),
        lm_head_weight,
        target,
        num_items_in_batch,
        ignore_index,
        final_logit_softcapping,
        kwargs.pop("accum_dtype", None),
        return_token_accuracy,
        return_predicted_tokens,
        **kwargs,
    )


def liger_causal_lm_cross_entropy(
    logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None, **kwargs
):
    """Drop-in for Hugging Face's ``ForCausalLMLoss`` on logits [B, T, V], running the
    cross-entropy kernel on an fp32 copy of the logits, as Hugging Face does: the kernel may
    use its input's buffer for the gradient, and the caller's logits (returned to the user)
    must stay intact. For bf16 logits the copy is the upcast Hugging Face makes anyway."""
    scratch = logits.float()
    if scratch is logits:
        scratch = logits.clone()
    target = shifted_targets(labels, shift_labels, ignore_index).to(logits.device)
    loss = functional.liger_cross_entropy(
        scratch.reshape(-1, vocab_size),
        target,
        ignore_index=ignore_index,
        reduction="sum" if num_items_in_batch is not None else "mean",
    )
    return _divide(loss, num_items_in_batch)


def logits_extras(logits, target, ignore_index, return_token_accuracy, return_predicted_tokens):
    """Token accuracy (share of non-ignored targets that are the argmax) and the argmax tokens
    [B*T] from kept logits, matching what the fused loss reports."""
    if not (return_token_accuracy or return_predicted_tokens):
        return None, None
    predicted = logits.detach().reshape(target.numel(), -1).argmax(-1)
    accuracy = None
    if return_token_accuracy:
        valid = target != ignore_index
        accuracy = ((predicted == target) & valid).sum() / valid.sum().clamp(min=1)
    return accuracy, predicted if return_predicted_tokens else None


def token_scaled_loss(logits, target, ignore_index, num_items_in_batch):
    """The DFT loss on kept logits: each token's cross-entropy times the detached probability
    of its target, mean over non-ignored tokens (or sum / ``num_items_in_batch``)."""
    nll = F.cross_entropy(
        logits.float().reshape(target.numel(), -1), target, ignore_index=ignore_index, reduction="none"
    )
    scaled = (nll * torch.exp(-nll).detach()).sum()
    if num_items_in_batch is None:
        return scaled / (target != ignore_index).sum().clamp(min=1)
    return _divide(scaled, num_items_in_batch)
