"""A loss of per-token log-probabilities (PPO / GRPO) from hidden states and a head in ONE pass:
6NHV flops, no ``[tokens, vocab]`` logits kept.

The loss is a function of ``logp[i] = log_softmax((x @ W.T + b) / temperature)[i, y_i]`` whose
derivative ``g_i = dloss/dlogp_i`` is known as soon as the logp of token i's sequence is (the
normalizers are whole-batch counts, known up front; sequence-level importance sampling and VESPO
need the whole sequence). So ``fused_linear_logprobs_loss`` (ops/fused_linear_logprobs.py, the
one-pass engine shared with the preference losses) runs over chunks of whole sequences: the
chunk's logits, each row's log-sum-exp and target logit, the head (plain PyTorch on ``[b, T]``)
and autograd for ``g``, the dlogits written over the logits, ``grad_x_c = dlogits @ W`` and
``grad_W += dlogits.T @ x_c`` in the shared fp32 accumulator, rounded in place once at the end.

Peak extra memory at H=4096, V=128256, bf16: the 2.1 GB fp32 accumulator + one chunk of logits
(``ROWS_BUDGET_BYTES``) + the input gradient: ~3.2 GB (Liger 0.8.5: 4.09 GB). The gradients are
computed during the forward for an upstream gradient of 1 and scaled in backward (the loss is a
scalar). The exact-path alternative (logits recomputed per vocabulary tile) costs 8NHV.
"""

import torch

from liger_kernel.ops.fused_linear_cross_entropy import split_size
from liger_kernel.ops.fused_linear_logprobs import fused_linear_logprobs_loss, one_pass_row_bytes

# Logits of one chunk of whole sequences: 4 sequences of 1024 tokens at V = 128256 in bf16, or 2
# in fp32 (1002 MiB) beside the 2.1 GB fp32 weight-gradient accumulator. A chunk holds at least
# one sequence, however long (sequence-level importance sampling and VESPO need all of its
# log-probs at once). Read at call time.
ROWS_BUDGET_BYTES = 1024 * 2**20


def logps_and_grads(x, weight, target, bias, temperature, seq_len, head, needs, budget=None):
    """Run ``head`` over ``x`` [N, H] (N = sequences x ``seq_len``, rows of a sequence adjacent)
    with ``target`` [N] in range. ``head(logp, seqs)`` gets the fp32 ``[b, seq_len]`` log-probs
    of sequences ``seqs`` (a slice) and returns ``(loss, metrics)``: 0-dim tensors whose sums over
    chunks are the totals. ``needs``: (input, weight, bias) gradients wanted; ``budget``: bytes
    of logits per chunk (None: ``ROWS_BUDGET_BYTES``). Returns ``(loss, metrics, grad_x,
    grad_w, grad_b)``, gradients for an upstream gradient of 1 (None where not wanted), from
    ``fused_linear_logprobs_loss`` over chunks of whole sequences."""
    n_seqs = x.shape[0] // seq_len if seq_len else 0
    row_bytes = seq_len * one_pass_row_bytes(x, weight, temperature)
    seqs = split_size(n_seqs, row_bytes, ROWS_BUDGET_BYTES if budget is None else budget)
    bounds = [slice(s0, min(s0 + seqs, n_seqs)) for s0 in range(0, n_seqs, seqs)]
    parts = []

    def chunk_loss(k, logp):
        part_loss, part_metrics = head(logp.view(-1, seq_len), bounds[k])
        parts.append(tuple(m.detach() for m in part_metrics))
        return part_loss

    chunks = [slice(b.start * seq_len, b.stop * seq_len) for b in bounds]
    loss, _, *grads = fused_linear_logprobs_loss(x, weight, target, bias, chunks, chunk_loss, temperature, -100, needs)
    if not parts:  # no sequence: the head on an empty batch gives the zeros of the right structure
        empty = torch.empty(0, seq_len, dtype=torch.float32, device=x.device)
        loss, metrics = head(empty, slice(0, 0))
        parts.append(tuple(m.detach() for m in metrics))
        loss = loss.detach()
    metrics = tuple(sum(ms[1:], ms[0]) for ms in zip(*parts))
    return loss, metrics, *grads
