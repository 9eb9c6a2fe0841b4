"""Fused linear cross-entropy on one GPU: time, peak extra memory and the exactness criterion of
issue 11 for the exact default (its rule's route), each of its routes (``LIGER_FLCE_EXACT_ROUTE``:
tiles with kept dlogits, accumulate), the fast path (bf16 accumulation) and fp32 accumulation.

    PYTHONPATH=src python benchmarks/flce_exact.py --out /tmp/flce      # H=4096, V=128256, bf16
    PYTHONPATH=/tmp/liger085 python benchmarks/flce_exact.py --providers liger085 --out /tmp/flce/peer

(the second: Liger Kernel 0.8.5 unpacked from .peer's wheel, in its own process, at its defaults).

Per (N, provider): ``do_bench`` median of forward + backward (>= 20 timed calls), peak extra memory
of one forward + backward (``max_memory_allocated`` minus what was allocated before: the inputs),
and, against a float64 reference on the same bf16 inputs, each gradient's max and rms error over
those of rounding the reference once to bf16 (1.00 = one rounding). The floor is 6NHV at the
measured rate of the forward's own bf16 matmul shape.
"""

import argparse
import functools
import json
import math
import os

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

MIB = 2**20
# name -> keyword arguments; "module": settings of the ops module for the run ("T": tile columns;
# "R": accumulate-route chunk tokens); "route": the exact path's LIGER_FLCE_EXACT_ROUTE for the run
# ("auto" unless given); "compile": torch.compile of the plain-PyTorch loss instead
PROVIDERS = {
    "exact (default)": {},  # the rule's route
    "exact tiles": {"route": "tiles"},  # kept dlogits and vocabulary tiles (the default before issue 16)
    "exact accumulate": {"route": "accumulate"},  # token chunks, fp32 accumulator: 6NHV
    "exact accumulate R512": {"route": "accumulate", "module": {"R": 512}},
    "exact accumulate R768": {"route": "accumulate", "module": {"R": 768}},
    "exact accumulate R2048": {"route": "accumulate", "module": {"R": 2048}},
    "exact nothing kept": {
        "route": "tiles",
        "module": {"EXACT_KEPT_CHUNK_SHARE": 0},
    },  # the default before kept dlogits
    "exact kept share 1/4": {"route": "tiles", "module": {"EXACT_KEPT_CHUNK_SHARE": 1 / 4}},
    "exact kept share 1/16": {"route": "tiles", "module": {"EXACT_KEPT_CHUNK_SHARE": 1 / 16}},
    "exact T1024": {"route": "tiles", "module": {"T": 1024}},
    # the tile route's forward chunks at the kept share alone (128 tokens at H <= 2560; before session 12)
    "exact (default) chunk floor 0": {"module": {"KEPT_CHUNK_MIN_ROWS": 0}},
    "exact tiles chunk floor 0": {"route": "tiles", "module": {"KEPT_CHUNK_MIN_ROWS": 0}},
    "exact tiles chunk floor 512": {"route": "tiles", "module": {"KEPT_CHUNK_MIN_ROWS": 512}},
    "fast (accum bf16)": {"accum_dtype": torch.bfloat16},
    "fast accum fp32": {"accum_dtype": torch.float32},
    "compile": {"compile": True},  # torch.compile(F.cross_entropy((x @ w.T).float(), y)), dynamic=False
    "liger085": {},  # whatever liger_kernel is on PYTHONPATH, at its defaults
}
DEFAULT_PROVIDERS = "exact (default),exact tiles,exact accumulate,fast (accum bf16),compile"
EXACT_PROVIDERS = [name for name in PROVIDERS if name.startswith("exact")]


def inputs(n, h, v, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, h, device="cuda").bfloat16().requires_grad_()
    w = (torch.randn(v, h, device="cuda") / math.sqrt(h)).bfloat16().requires_grad_()
    y = torch.randint(0, v, (n,), device="cuda")
    return x, w, y


def reference_grads(x, w, y, chunk=2048):
    """float64 gradients of the mean cross-entropy of x @ w.T, in token chunks."""
    x64, w64 = x.detach().double(), w.detach().double()
    gx, gw = torch.empty_like(x64), torch.zeros_like(w64)
    for s in range(0, x.shape[0], chunk):
        p = torch.softmax(x64[s : s + chunk] @ w64.T, -1)
        p[torch.arange(p.shape[0], device=p.device), y[s : s + chunk]] -= 1
        p /= x.shape[0]
        gx[s : s + chunk] = p @ w64
        gw.addmm_(p.T, x64[s : s + chunk])
        del p
    return gx, gw


def ratios(actual, reference):
    err = actual.double() - reference
    once = reference.to(actual.dtype).double() - reference
    return round((err.abs().max() / once.abs().max()).item(), 3), round((err.norm() / once.norm()).item(), 3)


@functools.cache
def compiled_loss():
    return torch.compile(lambda x, w, y: F.cross_entropy((x @ w.T).float(), y), dynamic=False)


def loss_of(x, w, y, kwargs):
    if kwargs.get("compile"):
        return compiled_loss()(x, w, y)
    out = liger_fused_linear_cross_entropy(x, w, y, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "loss", out)


def fwd_bwd(x, w, y, kwargs):
    x.grad = w.grad = None
    loss_of(x, w, y, kwargs).backward()


def measure(n, h, v, with_errors, providers, errors_for=()):
    x, w, y = inputs(n, h, v)
    rows = []
    ref = reference_grads(x, w, y) if with_errors else None
    for name in providers:
        kwargs = dict(PROVIDERS[name])
        saved = configure(kwargs.pop("module", {}), n, v)
        os.environ["LIGER_FLCE_EXACT_ROUTE"] = kwargs.pop("route", "auto")
        row = {"N": n, "provider": name}
        try:
            if name == "exact (default)":
                row["route"] = rule_route(n, w)
            fwd_bwd(x, w, y, kwargs)  # warm-up: kernels compiled, cuBLAS workspaces allocated
            x.grad = w.grad = None
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fwd_bwd(x, w, y, kwargs)
            torch.cuda.synchronize()
            row["peak_extra_MiB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
            if ref is not None and name in errors_for:
                row["gx_max_rms"], row["gw_max_rms"] = ratios(x.grad, ref[0]), ratios(w.grad, ref[1])
            step = functools.partial(fwd_bwd, x, w, y, kwargs)
            est = do_bench(step, warmup=25, rep=1, return_mode="median")
            row["ms"] = round(do_bench(step, warmup=200, rep=max(25 * est, 500)), 2)  # >= 20 timed calls
            row["fwd_ms"] = round(do_bench(functools.partial(loss_of, x, w, y, kwargs), rep=300), 2)
        except Exception as e:  # recorded, the next provider still runs
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        configure(saved, n, v)
        rows.append(row)
        print(json.dumps(row), flush=True)
    del ref
    return rows


def rule_route(n, w):
    """The route the exact path's rule picks for ``n`` tokens and a trainable weight ``w``."""
    from liger_kernel.ops import fused_linear_cross_entropy as ops

    return ops.exact_route(n, w, True, False, False, ops.EXACT_KEPT_CHUNK_SHARE)


def configure(settings, n, v):
    """Set attributes of the ops module ("T": vocabulary tile columns at ``n`` tokens, one fp32
    buffer; "R": accumulate-route chunks of that many tokens of ``v`` fp32 logits); returns the
    previous values."""
    if not settings:
        return {}
    from liger_kernel.ops import fused_linear_cross_entropy as ops

    settings = dict(settings)
    if "T" in settings:
        settings["EXACT_TILE_BUDGET_BYTES"] = 4 * n * settings.pop("T")
    if "R" in settings:
        settings["ACCUMULATE_ROWS_BUDGET_BYTES"] = 4 * v * settings.pop("R")
    saved = {k: getattr(ops, k) for k in settings}
    for k, value in settings.items():
        setattr(ops, k, value)
    return saved


def matmul_rate(n, h, v):
    """bf16 TFLOP/s of the forward's logits matmul [n, h] @ [h, v]."""
    a = torch.randn(n, h, device="cuda").bfloat16()
    b = torch.randn(v, h, device="cuda").bfloat16()
    ms = do_bench(lambda: a @ b.T, warmup=100, rep=500)
    return 2 * n * h * v / ms / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--tokens", default="8192,2048")
    p.add_argument("--errors", default="8192,2048", help="token counts at which to measure the errors")
    p.add_argument(
        "--errors-for",
        default="exact (default),exact tiles,exact accumulate,fast (accum bf16),fast accum fp32,liger085",
    )
    p.add_argument(
        "--providers",
        default=DEFAULT_PROVIDERS,
        help=f"comma-separated, of: {', '.join(PROVIDERS)}; 'exact-all': every exact provider",
    )
    p.add_argument("--hidden", type=int, default=4096, help="H (2048: issue 16's Llama-3.2-1B head)")
    p.add_argument("--vocab", type=int, default=128256, help="V (256000: Gemma 2; 262144: Gemma 3)")
    args = p.parse_args()
    h, v = args.hidden, args.vocab
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    results = {"meta": meta, "rows": [], "floor": {}}
    for n in (int(t) for t in args.tokens.split(",")):
        rate = matmul_rate(n, h, v)
        results["floor"][n] = {"tflops": round(rate, 1), "floor_ms": round(6 * n * h * v / rate / 1e9, 2)}
        print(json.dumps({"N": n, **results["floor"][n]}), flush=True)
        with_errors = str(n) in args.errors.split(",")
        providers = [q for p in args.providers.split(",") for q in (EXACT_PROVIDERS if p == "exact-all" else [p])]
        results["rows"] += measure(n, h, v, with_errors, providers, args.errors_for.split(","))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "flce_exact.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{meta['gpu']}, torch {meta['torch']}, H={h}, V={v}, bf16, mean reduction")
    print(
        f"{'N':>5} {'provider':26} {'fwd+bwd ms':>10} {'x floor':>7} {'fwd ms':>7} {'peak MiB':>9} "
        "gx max/rms   gw max/rms"
    )
    for r in results["rows"]:
        floor = results["floor"][r["N"]]["floor_ms"]
        if "error" in r:
            print(f"{r['N']:>5} {r['provider']:26} {r['error']}")
            continue
        gx, gw = r.get("gx_max_rms", "-"), r.get("gw_max_rms", "-")
        name = r["provider"] + (f" [{r['route']}]" if "route" in r else "")
        print(
            f"{r['N']:>5} {name:26} {r['ms']:>10} {r['ms'] / floor:>7.3f} {r['fwd_ms']:>7} "
            f"{r['peak_extra_MiB']:>9} {gx!s:12} {gw!s}"
        )


if __name__ == "__main__":
    main()
