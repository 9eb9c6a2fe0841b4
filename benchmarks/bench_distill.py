"""JSD distillation from hidden states on one GPU (issue 12): time, peak extra memory and gradient
errors of ``LigerFusedLinearJSDLoss`` against the plain path with materialized logits.

    PYTHONPATH=src python benchmarks/bench_distill.py --out /tmp/distill
    PYTHONPATH=/tmp/liger085 python benchmarks/bench_distill.py --providers chunked --out /tmp/distill/peer

(the second: Liger Kernel 0.8.5 unpacked from .peer's wheel, in its own process; "chunked" is
whatever ``liger_kernel.chunked_loss`` is on the path).

Shape of the issue: N=8192 tokens, H=4096, V=128256, bf16, a student head (trained) and a
teacher head (forward only), loss ``0.5 CE + 0.5 JSD_beta`` (the losses' defaults, beta=0.5).
Providers: "chunked" (``LigerFusedLinearJSDLoss()``; the other "chunked ..." names: ours with
other settings, ``VARIANTS``), "plain" (bf16 logits of both heads, TRL's
``generalized_jsd_loss`` on them plus PyTorch's cross-entropy: what TRL's GKD trainer does without
Liger, the CE added so both compute one loss). Per provider: ``do_bench`` median of forward +
backward, peak extra memory of one forward + backward (``max_memory_allocated`` minus the inputs),
and each student gradient's max and rms error against float64 (of the bf16 teacher logits, as the
spec computes them) over those of rounding the float64 result once to bf16 (1.00 = one
rounding). The floor is 8NHV (6 for the student, 2 for the teacher) at the measured rate of the
logits matmul.
"""

import argparse
import functools
import json
import math
import os

import torch
import torch.nn.functional as F
from flce_exact import matmul_rate, ratios  # benchmarks/ is the script's directory
from triton.testing import do_bench

BETA = 0.5


def inputs(n, h, v, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, h, device="cuda").bfloat16().requires_grad_()
    w = (torch.randn(v, h, device="cuda") * (3 / math.sqrt(h))).bfloat16().requires_grad_()
    xt = torch.randn(n, h, device="cuda").bfloat16()
    wt = (torch.randn(v, h, device="cuda") * (3 / math.sqrt(h))).bfloat16()
    y = torch.randint(0, v, (n,), device="cuda")
    return x, w, xt, wt, y


def generalized_jsd_loss(student_logits, teacher_logits, labels, beta):
    """TRL 0.24.0 ``GKDTrainer.generalized_jsd_loss`` (reduction "batchmean", temperature 1)."""
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    beta = torch.tensor(beta, dtype=student_log_probs.dtype)
    mixture_log_probs = torch.logsumexp(
        torch.stack([student_log_probs + torch.log(1 - beta), teacher_log_probs + torch.log(beta)]), dim=0
    )
    kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
    kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
    jsd = beta * kl_teacher + (1 - beta) * kl_student
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


def plain_loss(x, w, xt, wt, y):
    z = x @ w.T
    with torch.no_grad():
        zt = xt @ wt.T
    return 0.5 * F.cross_entropy(z, y) + 0.5 * generalized_jsd_loss(z, zt, y, BETA)


# Variants of ours for tuning: name -> the module constants it sets (the rest at their defaults).
# "chunked": the defaults (blocks of >= 2048 tokens, bf16 teacher logits, the loss pass backwards);
# "chunked main": as main before them (1024-token blocks, fp32 teacher logits, every pass forwards).
VARIANTS = {
    "chunked": {},
    "chunked main": dict(MIN_BLOCK_TOKENS=1, TEACHER_LOGITS_DTYPE=torch.float32, REVERSE_MIDDLE_PASS=False),
    "chunked K1024": dict(MIN_BLOCK_TOKENS=1),
    "chunked T32": dict(TEACHER_LOGITS_DTYPE=torch.float32),
    "chunked fwd": dict(REVERSE_MIDDLE_PASS=False),
    "chunked K1024 L512": dict(MIN_BLOCK_TOKENS=1, LOGITS_BUDGET_BYTES=512 * 2**20),
    "chunked B8192": dict(BLOCK_COLS=8192),
    "chunked B2048": dict(BLOCK_COLS=2048),
}
DEFAULTS = {}


def chunked_loss(name):
    """``LigerFusedLinearJSDLoss`` of whichever liger_kernel is on the path (a variant: ours only)."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    if VARIANTS[name] or DEFAULTS:
        from liger_kernel.chunked_loss import fused_linear_distillation
        from liger_kernel.ops import jsd_distillation_rows

        modules = (fused_linear_distillation, jsd_distillation_rows)
        if not DEFAULTS:
            DEFAULTS.update({(m, k): getattr(m, k) for m in modules for k in dir(m) if k.isupper()})
        for (module, key), value in DEFAULTS.items():
            setattr(module, key, VARIANTS[name].get(key, value))
    module = LigerFusedLinearJSDLoss(beta=BETA)
    return lambda x, w, xt, wt, y: module(x, w, xt, wt, y)


def reference_grads(x, w, xt, wt, y, chunk=1024):
    """float64 gradients of ``0.5 CE + 0.5 JSD`` (mean over tokens), in token chunks; the teacher
    logits as the spec and the teacher's ``lm_head`` give them (bf16), the student's exact."""
    x64, w64 = (t.detach().double() for t in (x, w))
    gx, gw = torch.empty_like(x64), torch.zeros_like(w64)
    n = x.shape[0]
    for s in range(0, n, chunk):
        z = (x64[s : s + chunk] @ w64.T).requires_grad_()
        zt = (xt[s : s + chunk] @ wt.T).double()
        loss = (
            F.cross_entropy(z, y[s : s + chunk], reduction="sum")
            + generalized_jsd_loss(z, zt, y[s : s + chunk], BETA) * (z.shape[0])
        )
        (g,) = torch.autograd.grad(loss * (0.5 / n), z)
        gx[s : s + chunk] = g @ w64
        gw.addmm_(g.T, x64[s : s + chunk])
        del z, zt, g
    return gx, gw


def fwd_bwd(loss_fn, x, w, xt, wt, y):
    x.grad = w.grad = None
    loss_fn(x, w, xt, wt, y).backward()


def measure(n, h, v, providers, with_errors):
    x, w, xt, wt, y = inputs(n, h, v)
    ref = reference_grads(x, w, xt, wt, y) if with_errors else None
    torch.cuda.empty_cache()
    rows = []
    for name in providers:
        row = {"N": n, "provider": name}
        try:
            loss_fn = plain_loss if name == "plain" else chunked_loss(name)
            fwd_bwd(loss_fn, x, w, xt, wt, y)  # warm-up
            x.grad = w.grad = None
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fwd_bwd(loss_fn, x, w, xt, wt, y)
            torch.cuda.synchronize()
            row["peak_extra_GB"] = round((torch.cuda.max_memory_allocated() - base) / 1e9, 3)
            if ref is not None:
                row["gx_max_rms"], row["gw_max_rms"] = ratios(x.grad, ref[0]), ratios(w.grad, ref[1])
            step = functools.partial(fwd_bwd, loss_fn, x, w, xt, wt, y)
            row["ms"] = round(do_bench(step, warmup=100, rep=1000), 2)
        except Exception as e:  # recorded, the next provider still runs
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)

    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--tokens", default="8192")
    p.add_argument("--providers", default="chunked,plain", help=f"of {[*VARIANTS, 'plain']}")
    p.add_argument("--no-errors", action="store_true", help="skip the float64 reference (about 20 s at 8192)")
    args = p.parse_args()
    h, v = 4096, 128256
    results = {"meta": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}, "rows": [], "floor": {}}
    for n in (int(t) for t in args.tokens.split(",")):
        rate = matmul_rate(n, h, v)
        results["floor"][n] = {"tflops": round(rate, 1), "floor_ms": round(8 * n * h * v / rate / 1e9, 2)}
        print(json.dumps({"N": n, **results["floor"][n]}), flush=True)
        results["rows"] += measure(n, h, v, args.providers.split(","), not args.no_errors)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_distill.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{results['meta']['gpu']}, H={h}, V={v}, bf16, 0.5 CE + 0.5 JSD(beta={BETA}), student + teacher heads")
    print(f"{'N':>5} {'provider':18} {'fwd+bwd ms':>10} {'x floor':>7} {'peak GB':>8} gx max/rms    gw max/rms")
    for r in results["rows"]:
        if "error" in r:
            print(f"{r['N']:>5} {r['provider']:18} {r['error']}")
            continue
        floor = results["floor"][r["N"]]["floor_ms"]
        gx, gw = r.get("gx_max_rms", "-"), r.get("gw_max_rms", "-")
        print(
            f"{r['N']:>5} {r['provider']:18} {r['ms']:>10} {r['ms'] / floor:>7.3f} {r['peak_extra_GB']:>8} "
            f"{gx!s:13} {gw!s}"
        )


if __name__ == "__main__":
    main()
