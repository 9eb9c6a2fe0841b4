"""DPO on one GPU at issue 12's shape: 4 chosen/rejected pairs of 1024 tokens, H=4096,
V=128256, bf16, a frozen reference head; fwd+bwd time and peak extra memory.

    PYTHONPATH=src python benchmarks/preference_bench.py                   # ours (one pass, two passes), plain
    PYTHONPATH=.peer/liger085 python benchmarks/preference_bench.py --providers liger085

(the second: Liger Kernel 0.8.5 from .peer's wheel, in its own process, through the same API).
"plain" is what TRL does without Liger: the logits materialized, log-softmax, gather, the loss.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from triton.testing import do_bench

MIB = 2**20


def inputs(pairs, seq, hidden, vocab, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(2 * pairs, seq, hidden, device="cuda").bfloat16().requires_grad_()
    w = (torch.randn(vocab, hidden, device="cuda") / math.sqrt(hidden)).bfloat16().requires_grad_()
    y = torch.randint(0, vocab, (2 * pairs, seq), device="cuda")
    y[:, : seq // 8] = -100  # a prompt
    ref_x = (x.detach() + 0.1 * torch.randn_like(x)).bfloat16()
    ref_w = (w.detach() + 0.01 * torch.randn_like(w)).bfloat16()
    return x, w, y, ref_x, ref_w


def plain_dpo(x, w, y, ref_x, ref_w, beta=0.1):
    def logps(h, weight):
        logits = (h @ weight.T).float()
        tok = torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (tok * (y != -100)).sum(-1)

    with torch.no_grad():
        ref = logps(ref_x, ref_w)
    pol = logps(x, w)
    n = y.shape[0] // 2
    logits = (pol[:n] - pol[n:]) - (ref[:n] - ref[n:])
    return -F.logsigmoid(beta * logits).mean()


def provider_fn(name):
    if name == "plain":
        return plain_dpo
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    if name.startswith("ours"):
        from liger_kernel.chunked_loss.fused_linear_preference import LigerFusedLinearPreferenceBase

        LigerFusedLinearPreferenceBase.one_pass = name == "ours (one pass)"
    loss_fn = LigerFusedLinearDPOLoss(beta=0.1)
    return lambda x, w, y, ref_x, ref_w: loss_fn(w, x, y, None, ref_x, ref_w)[0]


def measure(name, args):
    fn = provider_fn(name)
    x, w, y, ref_x, ref_w = inputs(args.pairs, args.seq, args.hidden, args.vocab)

    def step():
        x.grad = w.grad = None
        fn(x, w, y, ref_x, ref_w).backward()

    step()
    torch.cuda.synchronize()
    x.grad = w.grad = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / MIB
    ms = do_bench(step, warmup=5, rep=200, return_mode="median")
    return dict(provider=name, ms=round(ms, 2), peak_extra_mib=round(peak))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--providers", default="ours (one pass),ours (two passes),plain")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    args = parser.parse_args()
    for name in args.providers.split(","):
        print(json.dumps(measure(name, args)), flush=True)


if __name__ == "__main__":
    main()
