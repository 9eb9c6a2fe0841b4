"""The tiled SwiGLU MLP's gradients at ``bench_tiled_mlp``'s shapes and inputs (bf16): for each
provider, each gradient's max and rms error against a float64 reference on the same bf16 inputs,
over those of rounding the reference once to bf16 (``flce_exact.ratios``: 1.00 = one rounding).
Every provider rounds the intermediate (gate, up, their product) to bf16, so none is at 1.00; the
question is what summing the shards' weight gradients costs on top (ours in fp32, rounded once).
Liger Kernel 0.8.5 runs in its own process (``.peer/liger085`` first on PYTHONPATH), as in the
benchmark; ``eager`` is the untiled bf16 MLP (HF's ``LlamaMLP`` math).

    PYTHONPATH=src python benchmarks/tiled_mlp_accuracy.py --out benchmarks/results/h200/tiled_mlp_accuracy
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from bench_tiled_mlp import CASES, PROVIDERS, SMOKE, eager_mlp
from flce_exact import ratios
from kernel_bench import _run_peer, check_peer_import

GRADS = ("dx", "dW_gate", "dW_up", "dW_down")
PEER = ("liger085",)


def reference_grads(inputs, dy, chunk=4096):
    """float64 gradients of ``eager_mlp`` at these bf16 values, in token chunks of ``chunk`` rows
    (each weight's summed over them in float64 by ``.grad`` accumulation)."""
    x, *weights = (t.detach().double() for t in inputs)
    weights = [w.requires_grad_() for w in weights]
    rows, dy_rows = x.reshape(-1, x.shape[-1]), dy.double().reshape(-1, x.shape[-1])
    dx = torch.empty_like(rows)
    for start in range(0, rows.shape[0], chunk):
        shard = rows[start : start + chunk].requires_grad_()
        eager_mlp(shard, *weights).backward(dy_rows[start : start + chunk])
        dx[start : start + chunk] = shard.grad
    return dx.view(x.shape), *(w.grad for w in weights)


def errors(make, shape, device) -> dict:
    """``{gradient: [max, rms]}`` ratios of one provider at one shape, or ``{"error"}``."""
    try:
        fn, inputs, (dy,) = make(shape, device)
        fn(*inputs).backward(dy)  # .grad, not autograd.grad: Liger 0.8.5 adds its weights' there
        got = [t.grad for t in inputs]
        return {name: ratios(g, r) for name, g, r in zip(GRADS, got, reference_grads(inputs, dy))}
    except Exception as e:  # a provider that fails is reported, not fatal
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def table(title, cases, names, results) -> str:
    lines = [f"## {title}", "", "max / rms error over one rounding's (1.00 = one rounding of the float64 result)", ""]
    lines += ["| case | provider | " + " | ".join(GRADS) + " |", "|---" * (len(GRADS) + 2) + "|"]
    for case in cases:
        for p in names:
            r = results.get(p, {}).get(case, {"error": "not run"})
            cells = [r["error"][:60]] if "error" in r else [f"{r[g][0]:.2f} / {r[g][1]:.2f}" for g in GRADS]
            lines.append(f"| {case} | {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write <out>.json and <out>.md")
    parser.add_argument("--providers", default="ours,compile_tiled,eager,liger085", help="comma-separated")
    parser.add_argument("--cases", help="comma-separated subset")
    parser.add_argument("--smoke", action="store_true", help="a tiny case (CPU ok): checks the script runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = args.providers.split(",")
    cases = {"smoke": SMOKE} if args.smoke else {c: CASES[c] for c in (args.cases.split(",") if args.cases else CASES)}
    if args.child:
        check_peer_import()
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results = {}

    def write():  # after every provider: a run cut short by a timeout keeps what it measured
        report = table(f"Tiled SwiGLU MLP gradients against float64, bf16 ({gpu})", list(cases), names, results)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(f"{args.out}.json").write_text(json.dumps({"shapes": cases, "results": results}, indent=1))
            Path(f"{args.out}.md").write_text(report)
        return report

    peer = [p for p in names if p in PEER]
    if peer and not args.child and not args.smoke:
        results.update(_run_peer(__file__, list(cases), peer, device))
    for p in names:
        if p not in PEER or args.child:
            results[p] = {c: errors(PROVIDERS[p], shape, device) for c, shape in cases.items()}
            print(f"{p}: {results[p]}", file=sys.stderr)
            if not args.child:
                write()
    print(json.dumps(results) if args.child else write())


if __name__ == "__main__":
    main()
