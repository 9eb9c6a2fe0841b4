"""Where a provider's forward+backward spends its time outside the kernels (CUDA only).

    PYTHONPATH=src python benchmarks/host_cost.py --ops rms_norm,rope --level quick
    PYTHONPATH=.peer/liger085 python benchmarks/host_cost.py --provider liger085 ...
    PYTHONPATH=src python benchmarks/host_cost.py --provider floor   # an autograd Function doing nothing

For each op at its anchor shape and its smallest sweep shape, one line: do_bench median of
fwd+bwd, the CUDA-graph time (the kernels alone), the host time to enqueue one fwd+bwd (20 calls
back to back, no synchronization, best of 7 rounds: when it exceeds the graph time, do_bench
measures the CPU), the number of host synchronizations torch reports in one call, and the host
time of the forward and of the backward call alone. ``--profile`` adds a
``torch.profiler`` table of one do_bench-like loop (CUDA kernels and CUDA runtime calls) and a
``cProfile`` of the Python side.
"""

import argparse
import cProfile
import pstats
import sys
import time
import warnings
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ops  # noqa: E402
from run import graph_time, provider_calls  # noqa: E402


class _Floor(torch.autograd.Function):
    """The floor of any op whose autograd is written in Python: an autograd Function that only
    allocates its outputs and its inputs' gradients (no kernel, no check)."""

    @staticmethod
    def forward(ctx, grad_outs, *args):
        ctx.grads_like = [a if isinstance(a, torch.Tensor) and a.requires_grad else None for a in args]
        return tuple(torch.empty_like(g) for g in grad_outs)

    @staticmethod
    def backward(ctx, *grads):
        return None, *(None if a is None else torch.empty_like(a) for a in ctx.grads_like)


def floor_calls(op, p):
    """``provider_calls`` of the floor: ``_Floor`` on the op's inputs, outputs shaped as its outputs."""
    torch.manual_seed(0)
    args, grad_idx, grad_outs = op.inputs(p, "cuda")
    gin = [args[i] for i in grad_idx]

    def fwd():
        return _Floor.apply(grad_outs, *args)

    def bwd(outs):
        return torch.autograd.grad(outs, gin, grad_outs)

    return fwd, bwd, lambda: bwd(fwd())


def fwd_bwd_fn(op, p, provider):
    """One fwd+bwd call of ``provider``; its ``phases`` are the forward and the backward alone."""
    calls = floor_calls(op, p) if provider == "floor" else provider_calls(op, p, provider, "cuda")
    fwd, bwd, fwd_bwd = calls
    fwd_bwd.phases = fwd, bwd
    return fwd_bwd


def phase_us(fn, calls=50):
    """Median host time (us) of the forward call and of the backward call, each started on an
    idle GPU: the launch latency a short kernel cannot hide."""
    fwd, bwd = fn.phases
    times = {"fwd": [], "bwd": []}
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = fwd()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        bwd(outs)
        t3 = time.perf_counter()
        times["fwd"].append(t1 - t0)
        times["bwd"].append(t3 - t2)
    return [sorted(v)[calls // 2] * 1e6 for v in times.values()]


def host_us(fn, calls=20, rounds=7):
    """Host time (us) to enqueue one call: ``calls`` back to back without synchronizing, best of
    ``rounds``. One round alone read one-time costs after the CUDA-graph capture (0.90 ms for a
    LayerNorm whose do_bench median was 0.47 ms, which a host-bound call cannot beat)."""
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t0)
        torch.cuda.synchronize()
    return best / calls * 1e6


def syncs(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def profile(fn, rows):
    cache = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(5):
            cache.zero_()
            fn()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=60))
    runtime = [e for e in prof.key_averages() if e.key.startswith(("cuda", "cu")) and not e.key.startswith("cutlass")]
    print("  CUDA runtime calls (5 iterations):", ", ".join(f"{e.key} x{e.count}" for e in runtime))
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    pstats.Stats(pr).sort_stats("tottime").print_stats(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default="rms_norm,layer_norm,rope,swiglu,geglu,cross_entropy")
    ap.add_argument("--provider", default="ours")
    ap.add_argument("--level", default="quick")
    ap.add_argument("--profile", default="", help="comma list of ops to profile at the anchor")
    args = ap.parse_args()
    import liger_kernel

    print(f"liger_kernel from {liger_kernel.__file__}; torch {torch.__version__}; {torch.cuda.get_device_name()}")
    print(
        f"{'op':<26}{'shape':<28}{'do_bench':>10}{'graph':>10}{'host':>10}{'syncs':>7}{'fwd us':>8}{'bwd us':>8}"
        f"   ({args.provider}, ms)"
    )
    for name in args.ops.split(","):
        op = bench_ops.OPS[name]
        shapes = {"anchor": op.anchor(args.level)}
        smallest = op.sweeps(args.level)[0].points[0][1]
        if bench_ops.case_id(smallest) != bench_ops.case_id(shapes["anchor"]):
            shapes["small"] = smallest
        for label, p in shapes.items():
            try:
                fn = fwd_bwd_fn(op, p, args.provider)
                for _ in range(3):
                    fn()
                bench = do_bench(fn, warmup=25, rep=100)
                graph = graph_time(fn)
                print(
                    f"{name + ' ' + label:<26}{op.shape_str(p):<28}{bench:>10.3f}{graph:>10.3f}"
                    f"{host_us(fn) / 1e3:>10.3f}{syncs(fn):>7}" + "".join(f"{t:>8.0f}" for t in phase_us(fn)),
                    flush=True,
                )
                if name in args.profile.split(",") and label == "anchor":
                    profile(fn, 14)
            except Exception as e:  # one provider lacking one op must not end the others' lines
                print(f"{name + ' ' + label:<26}{op.shape_str(p):<28}  {type(e).__name__}: {e}"[:300], flush=True)
            fn = None
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
