"""A small harness for one op's providers at a few model shapes: forward+backward time and peak
extra memory, for ours (and its variants), eager PyTorch and ``torch.compile`` of it in this
process, and Liger Kernel 0.8.5 in a child process with ``.peer/liger085`` first on PYTHONPATH
(it has our import name; ``bash benchmarks/setup_peers.sh`` unpacks it).

A bench script defines its cases (name -> shape dict, and a tiny ``smoke`` one) and providers
(name -> ``make(shape, device)`` returning ``(fn, inputs, grad_outputs)``: ``fn(*inputs)`` returns
a tensor or a tuple, differentiated w.r.t. the inputs that require grad), names the peer's
providers, and calls ``main``. Providers import ``liger_kernel`` inside ``make``: in the peer's
process that name is Liger Kernel 0.8.5.

Time: the median of ``triton.testing.do_bench`` over one forward + ``torch.autograd.grad``
(host launch cost included: on the lent H200's slow host it can exceed the kernels' own time);
with ``--graph`` also the GPU time alone, steps replayed from a CUDA graph (``(GPU x)`` in the
table), measured after every provider's first pass so that a failed capture spoils nothing else.
Memory: ``max_memory_allocated`` during one step minus what was allocated before it (the inputs
and parameters not counted).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PEER_PATH = REPO / ".peer" / "liger085"


def _step(make, shape, device):
    fn, inputs, grad_outputs = make(shape, device)
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def step():
        out = fn(*inputs)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        # allow_unused: a module may compute its weights' gradients inside its own backward (Liger
        # 0.8.5's tiled MLP accumulates them into .grad), outside the graph autograd.grad sees
        return torch.autograd.grad(outs, wrt, grad_outputs[: len(outs)], allow_unused=True)

    return step


def measure(make, shape, device) -> dict:
    """``{"ms", "peak_mb"}`` of one provider at one shape, or ``{"error"}``."""
    try:
        step = _step(make, shape, device)
        step()  # compiles (Triton, torch.compile)
        if device == "cuda":
            import triton

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - before) / 2**20
            ms = triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
        else:
            step()
            peak, ms = float("nan"), float("nan")
        return {"ms": ms, "peak_mb": peak}
    except Exception as e:  # a provider that fails is reported, not fatal
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def graph_ms(make, shape, device, budget_ms=50.0) -> dict:
    """``{"gpu_ms"}``: ``run.graph_time`` of one step, a CUDA graph of a few back-to-back steps
    (about ``budget_ms`` of work) replayed, free of host launch cost; or ``{"graph_error"}``."""
    from run import graph_time

    try:
        step = _step(make, shape, device)
        step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        calls = max(1, min(10, int(budget_ms / max(start.elapsed_time(end), 1e-3))))
        return {"gpu_ms": graph_time(step, calls=calls, reps=5)}
    except Exception as e:  # e.g. a host sync inside the op: not capturable
        return {"graph_error": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
    finally:
        torch.cuda.empty_cache()


def check_peer_import() -> None:
    """In a peer's child process: stop unless ``liger_kernel`` is the peer's (``PEER_PATH``)."""
    import liger_kernel

    if not str(liger_kernel.__file__).startswith(str(PEER_PATH)):
        raise SystemExit(f"the peer process imported {liger_kernel.__file__}, not {PEER_PATH}")


def _run_peer(script, cases, peer, device, graph=False) -> dict:
    if not PEER_PATH.is_dir():
        return {p: {c: {"error": f"{PEER_PATH} missing: bash benchmarks/setup_peers.sh"} for c in cases} for p in peer}
    ours = str(REPO / "src")
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != Path(ours)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PEER_PATH), *rest]))
    cmd = [sys.executable, script, "--child", "--providers", ",".join(peer), "--cases", ",".join(cases)]
    cmd += ["--graph"] if graph else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {p: {c: {"error": f"peer process: {tail[0][:200]}"} for c in cases} for p in peer}


def _table(title, cases, providers, results) -> str:
    lines = [f"## {title}", "", "| case | " + " | ".join(providers) + " |", "|---" * (len(providers) + 1) + "|"]
    for case in cases:
        cells = []
        for p in providers:
            r = results.get(p, {}).get(case, {"error": "not run"})
            gpu = f" (GPU {r['gpu_ms']:.3f})" if "gpu_ms" in r else " (GPU: no graph)" if "graph_error" in r else ""
            cells.append(r["error"][:40] if "error" in r else f"{r['ms']:.3f} ms{gpu} / {r['peak_mb']:.0f} MB")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(script, title, cases, providers, peer=(), smoke=None):
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--out", help="write <out>.json and <out>.md")
    parser.add_argument("--providers", help="comma-separated subset")
    parser.add_argument("--cases", help="comma-separated subset")
    parser.add_argument("--smoke", action="store_true", help="a tiny case (CPU ok): checks the script runs")
    parser.add_argument("--graph", action="store_true", help="also the GPU time alone (CUDA graph replay)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = args.providers.split(",") if args.providers else list(providers)
    case_names = args.cases.split(",") if args.cases else list(cases)
    if args.smoke:
        case_names = ["smoke"]
        cases = {"smoke": smoke}
    if args.child:
        check_peer_import()
    title = f"{title} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'})"
    results = {}

    def write():  # after every provider: a run cut short by a timeout keeps what it measured
        report = _table(title, case_names, names, results)
        if args.out and not args.child:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            shapes = {c: cases[c] for c in case_names}
            Path(f"{args.out}.json").write_text(json.dumps({"shapes": shapes, "results": results}, indent=1))
            Path(f"{args.out}.md").write_text(report)
        return report

    wanted_peer = [p for p in names if p in peer]
    if wanted_peer and not args.child and not args.smoke:
        results.update(_run_peer(script, case_names, wanted_peer, device, args.graph))
    for p in names:
        if p in peer and not args.child:
            continue
        results[p] = {c: measure(providers[p], cases[c], device) for c in case_names}
        print(f"{p}: {results[p]}", file=sys.stderr)
        write()
    for p in names if args.graph and device == "cuda" else ():
        if p in peer and not args.child:
            continue
        for c in case_names:
            if "error" not in results[p][c]:
                results[p][c].update(graph_ms(providers[p], cases[c], device))
        print(f"{p} graph: {results[p]}", file=sys.stderr)
        write()
    if args.child:
        print(json.dumps(results))
        return
    print(write())
