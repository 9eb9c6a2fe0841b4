"""Unpaired preference losses (KTO) on per-token log-probabilities from the head.

``_input`` [S, T, H], ``target`` [S, T], ``preference_labels`` [S] (True: desirable). The same
passes as ``fused_linear_preference`` (its docstring has the numbers), chunked by whole sequences:
the subclass's ``preference_loss_fn(log_prob_chunk, preference_labels_chunk, full_target,
[ref_log_prob_chunk,] ...)`` returns the chunk's loss divided by ``full_target.shape[0]``, then
metrics. Returns ``(loss, (chosen_logps_sum, rejected_logps_sum, chosen_logits_sum,
rejected_logits_sum, *aux))``: sums over the desirable and undesirable sequences of their
log-probs and of their logits over every position and the vocabulary (as TRL's own KTO reports
them; computed without logits), ``aux`` from ``preference_loss_fn`` (KTO: the rewards' sums).
"""

import torch

from liger_kernel.chunked_loss.fused_linear_preference import (
    ChunkedLossFunction,
    autograd_route,
    check_sequences,
    group_bounds,
    in_autocast_dtype,
    logits_row_sums,
    reference_logps,
    save_grads,
    scaled_grads,
    sequence_logps,
    wanted_grads,
)
from liger_kernel.ops.fused_linear_cross_entropy import EXACT_ROWS_BUDGET_BYTES
from liger_kernel.ops.fused_linear_logprobs import (
    fused_linear_logprobs,
    fused_linear_logprobs_loss,
    one_pass_logits_dtype,
    one_pass_row_bytes,
)


class LigerFusedLinearUnpairedPreferenceBase(ChunkedLossFunction):
    """Base of the unpaired preference losses: subclasses define ``preference_loss_fn`` and call
    ``forward`` with ``cls``. See the module docstring."""

    one_pass = True

    @staticmethod
    def preference_loss_fn(*args, **kwargs):
        raise NotImplementedError("Subclasses of LigerFusedLinearUnpairedPreferenceBase define preference_loss_fn.")

    @staticmethod
    def forward(
        cls,
        ctx,
        _input,
        weight,
        target,
        preference_labels,
        bias=None,
        chunk_size=1,
        ignore_index=-100,
        compiled=True,
        use_ref_model=False,
        ref_input=None,
        ref_weight=None,
        ref_bias=None,
        average_log_prob=False,
        **loss_kwargs,
    ):
        needs = wanted_grads(_input, weight, bias)  # first: the engine's calls below record their own grad mode
        originals = (_input, weight, bias)
        _input, weight, bias = in_autocast_dtype(_input, weight, bias)
        check_sequences(_input, weight, target, bias, paired=False)
        if not isinstance(preference_labels, torch.Tensor) or preference_labels.shape != target.shape[:1]:
            raise ValueError(f"`preference_labels` must be a tensor of shape ({target.shape[0]},), one per sequence.")
        labels = preference_labels.bool()
        n_seq, seq_len = target.shape
        one_pass = any(needs) and cls.one_pass
        ref_seq = reference_logps(
            use_ref_model, ref_input, ref_weight, ref_bias, target, ignore_index, average_log_prob,
            one_pass_logits_dtype(_input, 1.0) if one_pass else None,
        )  # fmt: skip
        common = dict(
            preference_loss_fn=cls.preference_loss_fn, full_target=target, ignore_index=ignore_index,
            use_ref_model=use_ref_model, average_log_prob=average_log_prob,
        )  # fmt: skip
        x = _input.reshape(-1, _input.shape[-1])
        if one_pass:
            bounds = group_bounds(n_seq, seq_len, one_pass_row_bytes(x, weight, 1.0), EXACT_ROWS_BUDGET_BYTES)

            def chunk_loss(k, tok):
                part = slice(*bounds[k])
                ref = None if ref_seq is None else ref_seq[part]
                return unpaired_head(tok.view(-1, seq_len), target[part], labels[part], ref, **common, **loss_kwargs)[0]

            chunks = [slice(first * seq_len, last * seq_len) for first, last in bounds]
            loss, tok, *grads = fused_linear_logprobs_loss(
                x, weight, target.reshape(-1), bias, chunks, chunk_loss, 1.0, ignore_index, needs
            )
            with torch.no_grad():
                _, outputs = unpaired_head(tok.view(target.shape), target, labels, ref_seq, **common, **loss_kwargs)
                sums = logits_sums(x, weight, bias, labels, seq_len)
            outputs = (*outputs[:2], *sums, *outputs[2:])
        else:
            loss, outputs, grads = autograd_route(
                needs, _input, weight, bias,
                lambda x_, w_, b_: unpaired_compute_loss(
                    x_, w_, target, labels, b_, ref_seq=ref_seq, **common, **loss_kwargs
                ),
            )  # fmt: skip
        save_grads(ctx, originals, grads)
        return loss, outputs

    @staticmethod
    def backward(ctx, *grad_output):
        grad_x, grad_w, grad_b = scaled_grads(ctx, grad_output[0])
        return grad_x, grad_w, None, None, grad_b, *[None] * 8

    @staticmethod
    def chunk_forward(
        input_chunk, weight, target_chunk, preference_labels_chunk, bias=None, ignore_index=-100, average_log_prob=False
    ):
        """``(log_probs [n], chosen_logits_sum, rejected_logits_sum)`` of a chunk of sequences;
        the log-probs differentiable."""
        x = input_chunk.reshape(-1, input_chunk.shape[-1])
        tok = fused_linear_logprobs(x, weight, target_chunk.reshape(-1), bias, 1.0, ignore_index)
        seq = sequence_logps(tok.view(target_chunk.shape), target_chunk != ignore_index, average_log_prob)
        sums = logits_sums(x.detach(), weight.detach(), bias, preference_labels_chunk.bool(), target_chunk.shape[1])
        return seq, *sums

    @staticmethod
    def _compute_loss(
        input_chunk,
        weight,
        target_chunk,
        preference_labels_chunk,
        bias=None,
        preference_loss_fn=None,
        full_target=None,
        ignore_index=-100,
        use_ref_model=False,
        ref_input_chunk=None,
        ref_weight=None,
        ref_bias=None,
        average_log_prob=False,
        **loss_kwargs,
    ):
        """``(loss, (chosen_logps_sum, rejected_logps_sum, chosen_logits_sum,
        rejected_logits_sum, *aux))`` of a chunk, the loss normalized by ``full_target``."""
        ref_seq = reference_logps(
            use_ref_model, ref_input_chunk, ref_weight, ref_bias, target_chunk, ignore_index, average_log_prob
        )
        return unpaired_compute_loss(
            input_chunk, weight, target_chunk, preference_labels_chunk.bool(), bias, preference_loss_fn, full_target,
            ignore_index, use_ref_model, average_log_prob, ref_seq, **loss_kwargs,
        )  # fmt: skip


@torch.no_grad()
def logits_sums(x, weight, bias, labels, seq_len):
    """Sums of the logits of the desirable and of the undesirable sequences (every position)."""
    per_seq = logits_row_sums(x, weight, bias).view(-1, seq_len).sum(-1)
    return (per_seq * labels).sum(), (per_seq * ~labels).sum()


def unpaired_head(
    tok, target, labels, ref_seq, preference_loss_fn, full_target, ignore_index, use_ref_model, average_log_prob, **kw
):
    """``(loss, (chosen_logps_sum, rejected_logps_sum, *aux))`` from per-token log-probs [n, T]."""
    seq = sequence_logps(tok, target != ignore_index, average_log_prob)
    return sequence_head(seq, labels, ref_seq, preference_loss_fn, full_target, use_ref_model, kw)


def sequence_head(seq, labels, ref_seq, preference_loss_fn, full_target, use_ref_model, loss_kwargs):
    ref = dict(ref_log_prob_chunk=ref_seq) if use_ref_model else {}
    out = preference_loss_fn(seq, labels, full_target, **ref, **loss_kwargs)
    loss, aux = (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, ())
    detached = seq.detach()
    return loss, ((detached * labels).sum(), (detached * ~labels).sum(), *aux)


def unpaired_compute_loss(
    input_chunk,
    weight,
    target_chunk,
    labels,
    bias,
    preference_loss_fn,
    full_target,
    ignore_index,
    use_ref_model,
    average_log_prob,
    ref_seq,
    **loss_kwargs,
):
    seq, chosen_sum, rejected_sum = LigerFusedLinearUnpairedPreferenceBase.chunk_forward(
        input_chunk, weight, target_chunk, labels, bias, ignore_index, average_log_prob
    )
    loss, outputs = sequence_head(seq, labels, ref_seq, preference_loss_fn, full_target, use_ref_model, loss_kwargs)
    return loss, (*outputs[:2], chosen_sum, rejected_sum, *outputs[2:])
