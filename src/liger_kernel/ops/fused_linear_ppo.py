"""A loss of per-token log-probabilities (PPO / GRPO) from hidden states and a head in ONE pass:
6NHV flops, no ``[tokens, vocab]`` logits kept.

The loss is a function of ``logp[i] = log_softmax((x @ W.T + b) / temperature)[i, y_i]`` whose
derivative ``g_i = dloss/dlogp_i`` is known as soon as the logp of token i's sequence is (the
normalizers are whole-batch counts, known up front; sequence-level importance sampling and VESPO
need the whole sequence). So, over chunks of whole sequences:

1. ``z = x_c @ W.T (+ b)`` in fp32 (``mm_fp32``), divided by the temperature;
2. ``_row_stats_kernel`` (fused_linear_cross_entropy.py) gives each row's log-sum-exp and target
   logit, hence ``logp``;
3. the head (plain PyTorch on ``[b, T]``) gives the chunk's loss and metrics, autograd gives ``g``;
4. ``dlogits_in_place`` writes ``-g / temperature * (softmax - onehot)`` over ``z`` (in the
   matmul dtype, rounded once), then ``grad_x_c = dlogits @ W`` and
   ``grad_W += dlogits.T @ x_c`` into an fp32 ``[V, H]`` accumulator (``grad_b`` likewise),
   rounded once to the weight's dtype at the end.

Peak extra memory at H=4096, V=128256, bf16: the 2.1 GB fp32 accumulator + one chunk of fp32
logits (``ROWS_BUDGET_BYTES``) + the input gradient: ~3.2 GB (Liger 0.8.5: 4.09 GB). The
gradients are computed during the forward for an upstream gradient of 1 and scaled in backward
(the loss is a scalar). The exact-path alternative (logits recomputed per vocabulary tile) costs
8NHV.
"""

import torch

from liger_kernel.ops.cross_entropy import CEOptions
from liger_kernel.ops.fused_linear_cross_entropy import (
    RowTerms,
    _row_stats_kernel,
    accumulate_mm,
    dlogits_in_place,
    flat_view,
    mm_fp32,
    split_size,
)
from liger_kernel.ops.utils import next_power_of_2
from liger_kernel.utils import use_triton

# fp32 logits of one chunk of whole sequences: 2 sequences of 1024 tokens at V = 128256 (1002 MiB)
# beside the 2.1 GB fp32 weight-gradient accumulator. A chunk holds at least one sequence, however
# long (sequence-level importance sampling and VESPO need all of its log-probs at once).
ROWS_BUDGET_BYTES = 1024 * 2**20

_NO_SMOOTHING = CEOptions()


def logps_and_grads(x, weight, target, bias, temperature, seq_len, head, needs, budget=None):
    """Run ``head`` over ``x`` [N, H] (N = sequences x ``seq_len``, rows of a sequence adjacent)
    with ``target`` [N] in range. ``head(logp, seqs)`` gets the fp32 ``[b, seq_len]`` log-probs
    of sequences ``seqs`` (a slice) and returns ``(loss, metrics)``: 0-dim tensors whose sums over
    chunks are the totals. ``needs``: (input, weight, bias) gradients wanted; ``budget``: bytes
    of fp32 logits per chunk (None: ``ROWS_BUDGET_BYTES``). Returns ``(loss, metrics, grad_x,
    grad_w, grad_b)``, gradients for an upstream gradient of 1 (None where not wanted)."""
    if not use_triton(x) or x.dtype == torch.float64:
        return _reference(x, weight, target, bias, temperature, seq_len, head, needs)
    n_rows, hidden = x.shape
    n_vocab = weight.shape[0]
    n_seqs = n_rows // seq_len if seq_len else 0
    need_x, need_w, need_b = needs
    any_grad = need_x or need_w or need_b
    grad_x = torch.empty_like(x) if need_x else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w and n_rows == 0 else None
    grad_b = torch.zeros(n_vocab, dtype=torch.float32, device=x.device) if need_b else None
    seqs = split_size(n_seqs, seq_len * n_vocab * 4, ROWS_BUDGET_BYTES if budget is None else budget)
    buf = torch.empty(min(seqs, n_seqs) * seq_len * n_vocab, dtype=torch.float32, device=x.device)
    stats = torch.empty(2, n_rows, dtype=torch.float32, device=x.device)
    loss, metrics, z, dlogits = None, None, None, None
    w_t = weight.t()
    for s0 in range(0, n_seqs, seqs):
        s1 = min(s0 + seqs, n_seqs)
        rows = slice(s0 * seq_len, s1 * seq_len)
        z = flat_view(buf, (s1 - s0) * seq_len, n_vocab)
        mm_fp32(x[rows], w_t, z)
        if bias is not None:
            z += bias
        if temperature != 1.0:
            z.mul_(1.0 / temperature)
        lse, z_label = stats[0, rows], stats[1, rows]
        _row_stats_kernel[(z.shape[0],)](
            z, z.stride(0), target[rows], lse, lse, z_label, lse, n_vocab,
            HAS_WEIGHT=False, SMOOTHING=False, BLOCK=min(4096, next_power_of_2(n_vocab)), num_warps=8,
        )  # fmt: skip
        logp = (z_label - lse).view(s1 - s0, seq_len)
        with torch.enable_grad():
            leaf = logp.requires_grad_(any_grad)
            part_loss, part_metrics = head(leaf, slice(s0, s1))
            g = None
            if any_grad and part_loss.requires_grad:
                (g,) = torch.autograd.grad(part_loss, leaf)
        part_loss, part_metrics = part_loss.detach(), tuple(m.detach() for m in part_metrics)
        loss = part_loss if loss is None else loss + part_loss
        metrics = part_metrics if metrics is None else tuple(a + b for a, b in zip(metrics, part_metrics))
        if not any_grad:
            continue
        coef = torch.zeros(z.shape[0], dtype=torch.float32, device=x.device) if g is None else g.reshape(-1)
        coef = coef.float() * (-1.0 / temperature)
        terms = RowTerms(lse, target[rows], coef, coef, coef)
        dlogits = dlogits_in_place(z, x.dtype, 0, terms, None, _NO_SMOOTHING)
        if need_x:
            torch.mm(dlogits, weight, out=grad_x[rows])
        if need_w:
            if grad_w is None:
                grad_w = torch.empty(weight.shape, dtype=torch.float32, device=x.device)
            accumulate_mm(grad_w, dlogits.t(), x[rows], first=s0 == 0)
        if need_b:
            grad_b += dlogits.sum(0, dtype=torch.float32)
    buf = z = dlogits = None  # the chunk buffer is freed before the rounded weight gradient exists
    if loss is None:  # no sequence: the head on an empty batch gives the zeros of the right structure
        empty = torch.empty(0, seq_len, dtype=torch.float32, device=x.device)
        loss, metrics = (t.detach() for t in head(empty, slice(0, 0)))
        metrics = tuple(metrics)
    grad_w = None if grad_w is None else grad_w.to(weight.dtype)
    grad_b = None if grad_b is None else grad_b.to(bias.dtype)
    return loss, metrics, grad_x, grad_w, grad_b


def _reference(x, weight, target, bias, temperature, seq_len, head, needs):
    """``logps_and_grads`` through the logits (``fused_linear_logprobs_reference``'s math, float64
    kept float64) and autograd."""
    leaves = [None if t is None else t.detach().requires_grad_(n) for t, n in zip((x, weight, bias), needs)]
    with torch.enable_grad():
        logits = torch.nn.functional.linear(leaves[0], leaves[1], leaves[2])  # in the input dtype, as lm_head
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        logp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        n_seqs = x.shape[0] // seq_len if seq_len else 0
        loss, metrics = head(logp.view(n_seqs, seq_len), slice(0, n_seqs))
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    found = iter(torch.autograd.grad(loss, wanted, allow_unused=True) if wanted and loss.requires_grad else ())
    grads = []
    for t in leaves:
        g = next(found, None) if t is not None and t.requires_grad else None
        grads.append(torch.zeros_like(t) if g is None and t is not None and t.requires_grad else g)
    return loss.detach(), tuple(m.detach() for m in metrics), *grads
