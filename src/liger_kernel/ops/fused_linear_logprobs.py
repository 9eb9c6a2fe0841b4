"""Per-token log-probabilities of chosen tokens from hidden states and a head, without the logits.

``logp[i] = log_softmax((x @ W.T + b) / temperature)[i, target[i]]`` (0 at ``ignore_index``),
differentiable in ``x``, ``W`` and ``b``. Every post-training loss of ``liger_kernel.chunked_loss``
(DPO, ORPO, CPO, SimPO, KTO, GRPO) is a function of these per-token values: its gradient with
respect to the logits is ``g_i (onehot - softmax) / temperature`` per row, which the fused-head
machinery of ``fused_linear_cross_entropy`` produces chunk by chunk.

This first version dispatches to the reference; the fused kernels replace it.
"""

import torch


def fused_linear_logprobs_reference(x, weight, target, bias=None, temperature=1.0, ignore_index=-100):
    """The spec and the CPU fallback: logits in the input dtype (as an ``lm_head`` computes them),
    log-softmax in fp32, the target's entry per row, 0 at ignored rows; fp32 ``[N]``."""
    logits = torch.nn.functional.linear(x, weight, bias).float() / temperature
    mask = target != ignore_index
    safe = torch.where(mask, target, 0)
    logp = torch.log_softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


def fused_linear_logprobs(x, weight, target, bias=None, temperature=1.0, ignore_index=-100):
    """``x`` [N, H], ``weight`` [V, H], ``target`` [N] int, ``bias`` [V] or None -> fp32 [N]."""
    return fused_linear_logprobs_reference(x, weight, target, bias, temperature, ignore_index)
