"""Experts block forward + backward at two real layer shapes, bf16, on one GPU: ours
(``LigerExperts``) vs transformers' experts modules (its default eager loop, and its
``grouped_mm`` implementation where the installed version has it) vs Liger Kernel 0.8.5's
``LigerExperts`` (run in its own process from ``--peer``, the unpacked wheel).

    python benchmarks/bench_moe.py --out benchmarks/results/h200/moe [--peer .peer/liger085]

Shapes: Qwen3-30B-A3B (128 experts, top-8, hidden 2048, width 768) and GPT-OSS-20B (32 experts,
top-4, hidden 2880, width 2880), 8192 tokens. Time is ``triton.testing.do_bench``'s median of
one forward + backward (parameter and input gradients). The first call's output and gradients
(which autotuning produced) are compared with transformers' (first 4096 values each). Peak memory
is the most allocated during one forward + backward beyond what weights and inputs already hold.
TFLOP/s counts the seven GEMMs of a forward + backward, 18 * tokens * top_k * hidden * width.
Liger 0.8.5's module has no biases or clamped gating: at the GPT-OSS shape it runs plain SwiGLU
experts of the same sizes.

``ours_old`` is ours as of commit 8cca7b3 (but for top_k, now a compile-time constant): the
autotune settings of then (``OLD_CONFIGS``) and the down backward in one kernel; ``ours_fused`` is
today's settings with the down backward in one kernel (``fused_moe.SPLIT_DOWN_BACKWARD = False``);
together they tell in one run what the settings and the split each changed. ``first s`` is the
first forward + backward (compiling and autotuning included). Liger 0.8.5's first call autotunes
for minutes: an implementation whose process runs past ``--timeout`` (``--peer-timeout`` for
Liger) gets a row saying how long it had been at the shape it was on.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types

import torch

SHAPES = {
    "qwen3_30b_a3b": dict(experts=128, top_k=8, hidden=2048, width=768, tokens=8192),
    "gpt_oss_20b": dict(experts=32, top_k=4, hidden=2880, width=2880, tokens=8192),
}
MATMUL_TFLOPS = 720.0  # the H200's measured dense bf16 matmul rate, the yardstick of the TFLOP/s column
# ops/fused_moe.CONFIGS as of commit 8cca7b3 (measured on the H200 in session 7): the ``ours_old`` baseline.
OLD_CONFIGS = {
    "gate_up": [(128, 64, 8, 3), (64, 64, 4, 4), (128, 64, 8, 4), (128, 32, 8, 4)],
    "pair_output": [(128, 64, 4, 4), (128, 64, 8, 3), (256, 64, 8, 3), (256, 64, 8, 4)],
    "down_backward": [(64, 64, 4, 4), (64, 64, 8, 4), (64, 128, 4, 3), (128, 64, 8, 3)],
    "weight_grad": [
        (128, 64, 128, 8, 3), (128, 32, 128, 4, 4), (128, 32, 128, 4, 5), (256, 32, 128, 8, 4), (256, 64, 128, 8, 3)
    ],
}  # fmt: skip
OURS = ("ours", "ours_old", "ours_fused")


def _config(shape_name, s, gpt_oss_layout):
    """A transformers config of the shape (GPT-OSS's own for its layout, else Qwen3-MoE's)."""
    if gpt_oss_layout:
        from transformers import GptOssConfig

        return GptOssConfig(
            hidden_size=s["hidden"], intermediate_size=s["width"], num_local_experts=s["experts"],
            num_experts_per_tok=s["top_k"],
        )  # fmt: skip
    try:
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(
            hidden_size=s["hidden"], moe_intermediate_size=s["width"], num_experts=s["experts"],
            num_experts_per_tok=s["top_k"], hidden_act="silu",
        )  # fmt: skip
    except ImportError:  # a process without transformers: the fields the modules read
        return types.SimpleNamespace(
            hidden_size=s["hidden"], moe_intermediate_size=s["width"], intermediate_size=s["width"],
            num_experts=s["experts"], hidden_act="silu",
        )  # fmt: skip


def _module(impl, shape_name, s):
    gpt_oss = shape_name.startswith("gpt_oss") and impl != "liger085"
    config = _config(shape_name, s, gpt_oss)
    if impl in (*OURS, "liger085"):
        from liger_kernel.transformers.swiglu import LigerExperts

        module = LigerExperts(config)
    else:
        if gpt_oss:
            from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts as Experts
        else:
            from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts as Experts
        config._experts_implementation = impl.removeprefix("hf_")
        module = Experts(config)
    module = module.to("cuda", torch.bfloat16)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02)
    return module


def _inputs(s):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(s["tokens"], s["hidden"], device="cuda", generator=g).to(torch.bfloat16)
    logits = torch.randn(s["tokens"], s["experts"], device="cuda", generator=g)
    weights, index = logits.softmax(-1).topk(s["top_k"], dim=-1)
    dy = torch.randn(s["tokens"], s["hidden"], device="cuda", generator=g).to(torch.bfloat16)
    return x.requires_grad_(), index, weights.to(torch.bfloat16).requires_grad_(), dy


def measure(impl, shape_name, profile=False):
    """{ms, peak_mib, tflops, y_checksum...} of one implementation at one shape."""
    from triton.testing import do_bench

    s = SHAPES[shape_name]
    if impl in ("ours_old", "ours_fused"):
        from liger_kernel.ops import fused_moe

        fused_moe.SPLIT_DOWN_BACKWARD = False
        if impl == "ours_old":
            fused_moe.CONFIGS = {name: fused_moe._configs(*settings) for name, settings in OLD_CONFIGS.items()}
    print(f"BEGIN {shape_name} {time.time():.1f}", flush=True)
    torch.manual_seed(0)
    module = _module(impl, shape_name, s)
    x, index, weights, dy = _inputs(s)
    leaves = [x, weights, *module.parameters()]

    def step():
        module(x, index, weights).backward(dy)

    start = time.perf_counter()
    y = module(x, index, weights)  # the first call compiles and autotunes: its results are compared
    y.backward(dy)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    results = {"y": y, "x": x.grad, "top_k_weights": weights.grad, **{n: p.grad for n, p in module.named_parameters()}}
    heads = {name: t.detach().float().flatten()[:4096].tolist() for name, t in results.items() if t is not None}
    del y, results
    for t in leaves:
        t.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ms = do_bench(step, warmup=50, rep=300, grad_to_none=leaves, return_mode="median")
    if profile and impl in OURS:
        for t in leaves:  # as do_bench's steps: no accumulation into existing gradients (a 1 ms pass at GPT-OSS)
            t.grad = None
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        print(f"{impl} {shape_name} kernels of one step:")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    flops = 18 * s["tokens"] * s["top_k"] * s["hidden"] * s["width"]
    return {
        "impl": impl, "shape": shape_name, "ms": ms, "peak_mib": peak / 2**20, "tflops": flops / ms / 1e9,
        "first_s": first_s,
        "matmul_fraction": flops / ms / 1e9 / MATMUL_TFLOPS,
        "heads": None if impl == "liger085" and shape_name.startswith("gpt_oss") else heads,
    }  # fmt: skip


def _hf_impls():
    """transformers' experts implementations this version has (eager first)."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:
        return ["hf_eager"]
    # batched_mm gathers every pair's weights ([pairs, 2I, H]: hundreds of GB at these shapes): not run.
    return ["hf_eager"] + (["hf_grouped_mm"] if "grouped_mm" in ALL_EXPERTS_FUNCTIONS else [])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--peer", default=".peer/liger085")
    parser.add_argument("--impls", default=None, help="comma-separated; default: ours, every hf_*, liger085")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--one", action="store_true", help="(internal) print one JSON row per measurement")
    parser.add_argument("--timeout", type=int, default=150, help="seconds per implementation (both shapes)")
    parser.add_argument("--peer-timeout", type=int, default=None, help="seconds for liger085 (default --timeout)")
    parser.add_argument("--budget", type=int, default=10**6, help="seconds for all implementations together")
    parser.add_argument("--profile", action="store_true", help="print the GPU kernels of one step of ours")
    parser.add_argument("--keep-heads", action="store_true", help="keep the compared values in moe.json (to --merge)")
    parser.add_argument("--merge", default="", help="comma-separated moe.json files (--keep-heads) to report with")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    merged = []
    for path in filter(None, args.merge.split(",")):
        if os.path.exists(path):
            with open(path) as f:
                merged += json.load(f)["rows"]
        else:
            print(f"{path} missing: not merged")
    if args.impls == "":  # report only
        report(merged, args.out, args.keep_heads)
        return
    if args.one:
        for impl in args.impls.split(","):
            for shape in shapes:
                print("ROW " + json.dumps(measure(impl, shape, args.profile)), flush=True)
                torch.cuda.empty_cache()
        return
    impls = args.impls.split(",") if args.impls else ["ours", *_hf_impls(), "liger085"]
    # One process per implementation (no allocator or autotune state shared). With two GPUs Liger
    # 0.8.5, whose first call autotunes for minutes, runs on the second one meanwhile.
    gpus = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
    jobs = []
    for impl in impls:
        env = dict(os.environ)
        if impl == "liger085":
            if not os.path.isdir(args.peer):
                print(f"skip liger085: {args.peer} missing (run benchmarks/setup_peers.sh)")
                continue
            env["PYTHONPATH"] = os.path.abspath(args.peer)
        env["CUDA_VISIBLE_DEVICES"] = visible[gpus - 1 if impl == "liger085" and gpus > 1 else 0]
        cmd = [sys.executable, __file__, "--one", "--impls", impl, "--shapes", args.shapes]
        cmd += ["--profile"] if args.profile else []
        jobs.append((impl, cmd, env))
    # The peer first, in the background, with two GPUs; last with one (it may run out of time).
    jobs.sort(key=lambda job: (job[0] == "liger085") != (gpus > 1))
    background = {}
    rows = []
    deadline = time.monotonic() + args.budget
    for impl, cmd, env in jobs:
        # Output to files, not pipes: a background process must never block on a full pipe.
        logs = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        process = subprocess.Popen(cmd, env=env, stdout=logs[0], stderr=logs[1], text=True)
        process.logs = logs
        if impl == "liger085" and gpus > 1:
            background[impl] = process
            continue
        rows += _collect(impl, process, shapes, _limit(impl, args, deadline))
    for impl, process in background.items():
        rows += _collect(impl, process, shapes, _limit(impl, args, deadline))
    report(rows + merged, args.out, args.keep_heads)


def _limit(impl, args, deadline):
    limit = args.peer_timeout if impl == "liger085" and args.peer_timeout is not None else args.timeout
    return max(1.0, min(limit, deadline - time.monotonic()))


def _collect(impl, process, shapes, timeout):
    """The JSON rows a ``--one`` process printed (its other output echoed). A process killed at the
    timeout gets a row for the shape it was on, saying how long it had run (its first call, for
    Liger 0.8.5: the autotuning), and one per shape it never reached."""
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        timed_out = True
        print(f"{impl}: timed out after {timeout:.0f} s")
    killed_at = time.time()
    for log in process.logs:
        log.seek(0)
    stdout, stderr = (log.read() for log in process.logs)
    found = [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("ROW ")]
    begun = dict(line.split()[1:3] for line in stdout.splitlines() if line.startswith("BEGIN "))
    print("\n".join(line for line in stdout.splitlines() if not line.startswith(("ROW ", "BEGIN "))))
    if len(found) < len(shapes):
        print(f"{impl}: {len(found)} of {len(shapes)} shapes measured\n{stderr[-3000:]}")
    done = {r["shape"] for r in found}
    for shape in shapes:
        if shape in done:
            continue
        if timed_out and shape in begun:
            status = f"unfinished after {killed_at - float(begun[shape]):.0f} s (the first call compiles, autotunes)"
        else:
            status = "not reached (time limit)" if timed_out else "failed (see log)"
        found.append({"impl": impl, "shape": shape, "status": status})
    return found


def _worst_diff(heads, reference):
    """(name, max |a - b| / max |b|) of the output or gradient (first 4096 values) differing most."""
    diffs = {}
    for name, values in heads.items():
        if name in reference:
            a, b = torch.tensor(values), torch.tensor(reference[name])
            diffs[name] = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    return max(diffs.items(), key=lambda item: item[1])


def report(rows, out, keep_heads=False):
    lines = [
        "| shape | implementation | fwd+bwd ms | peak MiB | TFLOP/s | of 720 | vs fastest other | first s "
        "| worst diff vs hf |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in SHAPES:
        here = [r for r in rows if r["shape"] == shape]
        others = [r["ms"] for r in here if r["impl"] not in OURS and "ms" in r]
        reference = next(
            (r for r in sorted(here, key=lambda r: r["impl"] != "hf_grouped_mm") if r["impl"].startswith("hf_")), None
        )
        reference = reference if reference and reference.get("heads") else None
        for r in here:
            if "ms" not in r:  # timed out or failed
                lines.append(f"| {shape} | {r['impl']} | {r['status']} |  |  |  |  |  |  |")
                continue
            diff = ""
            if reference and r.get("heads") and r is not reference:
                diff = "{1:.1e} ({0})".format(*_worst_diff(r["heads"], reference["heads"]))
            speed = f"{min(others) / r['ms']:.2f}x" if r["impl"] in OURS and others else ""
            first = f"{r['first_s']:.1f}" if "first_s" in r else ""
            lines.append(
                f"| {shape} | {r['impl']} | {r['ms']:.3f} | {r['peak_mib']:.0f} | {r['tflops']:.0f} | "
                f"{r['matmul_fraction']:.0%} | {speed} | {first} | {diff} |"
            )
    table = "\n".join(lines)
    print(table)
    if out:
        os.makedirs(out, exist_ok=True)
        if not keep_heads:
            rows = [{k: v for k, v in r.items() if k != "heads"} for r in rows]
        env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else ""}
        with open(os.path.join(out, "moe.json"), "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
        with open(os.path.join(out, "moe.md"), "w") as f:
            f.write(table + "\n")
        try:
            plot(rows, os.path.join(out, "moe.png"))
        except ImportError:
            print("matplotlib missing: no plot")


def plot(rows, path):
    """Bars per shape: fwd+bwd time and peak memory of each implementation (hf_eager's time, tens
    of times the others', is written on its bar and clipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "ms" in r]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    get = {(r["shape"], r["impl"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(impls)
    for ax, key, title in ((axes[0], "ms", "fwd+bwd ms (lower is better)"), (axes[1], "peak_mib", "peak MiB")):
        top = 1.3 * max(r[key] for r in rows if r["impl"] != "hf_eager")
        for j, impl in enumerate(impls):
            for i, shape in enumerate(SHAPES):
                r = get.get((shape, impl))
                if r is None:
                    continue
                x = i + (j - (len(impls) - 1) / 2) * width
                ax.bar(x, min(r[key], top), width, color=f"C{j}", label=impl if i == 0 else None)
                ax.text(x, min(r[key], top), f"{r[key]:.1f}" if key == "ms" else f"{r[key]:.0f}", ha="center",
                        va="bottom", fontsize=7)  # fmt: skip
        ax.set_ylim(0, top * 1.1)
        ax.set_xticks(range(len(SHAPES)), list(SHAPES))
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("MoE experts block, bf16, 8192 tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
