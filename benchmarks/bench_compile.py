"""Training under ``torch.compile``: tokens/s and peak memory, stock vs ours, compiled vs eager, and
which of our ops to leave to Inductor under compile.

    python benchmarks/bench_compile.py                       # GPU: every row (about 5-6 min on an H200)
    python benchmarks/bench_compile.py --rows llama-1b-8x2048:hf-compile,llama-1b-8x2048:ours-compile
    python benchmarks/bench_compile.py --smoke               # CPU: tiny models, checks the pipeline

The cases (shapes, batch, sequence) and the patch are ``benchmarks/e2e.py``'s, as are the training
step (bf16 weights, fused AdamW, sdpa, labels = inputs) and the one-process-per-row isolation.
Variants: ``hf-compile`` (stock transformers compiled), ``ours-eager``, ``ours-compile``, and
``ours-compile-no-<op>``: our patch without that op (the stock module or function, compiled by
Inductor with what surrounds it); a ``-cudnn`` suffix runs a variant with cuDNN's attention first in
SDPA's backend order (torch's own order puts flash first). Compilation is regional: each decoder layer is compiled
(``fullgraph=True``), the embedding, final norm and loss run as they are (for ours, the fused
linear cross-entropy; for stock, ``lm_head`` and the cross-entropy on upcast logits): identical
layers share one compiled graph, which keeps compile time per row to tens of seconds. ``--whole``
compiles the whole model instead. Warm-up steps (compile, autotune) are untimed.

The model trains with ``config.use_cache = False``, as the Hugging Face Trainer sets it
(``TrainingArguments.use_cache`` defaults to False). With the cache on, a training forward builds a
``DynamicCache`` and each layer's attention reads ``cache.layers[layer_idx]``: a guard per layer,
so every layer recompiles, and at the 9th (``recompile_limit`` 8) ``fullgraph=True`` fails
(``FailOnRecompileLimitHit``), stock and ours alike. Each row records the graphs Dynamo compiled;
a row that compiled more than one graph per distinct layer type (``config.layer_types``) is an error.

Rows run in order of importance: each case's headline rows (Llama, Gemma 2, Qwen2.5), then the
per-op choices. ``--budget-s`` bounds them all: a row gets what is left of it (at most
``--timeout-s``), and one with under 30 s left is recorded as skipped. ``--profile`` adds one step
under ``torch.profiler`` per row, after the timed ones: its GPU kernels (calls and time per name), the
time the GPU was busy (union of kernel intervals) and the span (``benchmarks/compile_floor.py``
groups them), and the host time per operator (``host_ops``).

Writes ``benchmarks/results/<gpu>/compile.json`` and ``compile.md`` after every row (a time limit
keeps what finished).
"""

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import e2e  # noqa: E402

RESULT = "@@COMPILE "
# The ops a variant may leave to Inductor: the patch function's flag for each.
OP_FLAGS = {"rope": "rope", "swiglu": "swiglu", "geglu": "geglu", "rms_norm": "rms_norm"}
# (case, variant) in run order: the headline rows first, per-op choices last.
ROWS = [
    ("llama-1b-8x2048", "hf-compile"),
    ("llama-1b-8x2048", "ours-compile"),
    ("llama-1b-8x2048", "ours-eager"),
    ("gemma2-2b-2x2048", "hf-compile"),
    ("gemma2-2b-2x2048", "ours-compile"),
    ("gemma2-2b-2x2048", "ours-eager"),
    ("qwen2.5-1.5b-4x2048", "hf-compile"),
    ("qwen2.5-1.5b-4x2048", "ours-compile"),
    ("qwen2.5-1.5b-4x2048", "ours-eager"),
    ("llama-1b-8x2048", "ours-compile-no-rope"),
    ("llama-1b-8x2048", "ours-compile-no-swiglu"),
    ("llama-1b-8x2048", "ours-compile-no-rms_norm"),
]
# Suffix of a variant run with cuDNN's attention first (a measurement, not a default: stock or ours alike).
CUDNN = "-cudnn"
ROWS += [("llama-1b-8x2048", "hf-compile" + CUDNN), ("llama-1b-8x2048", "ours-compile" + CUDNN)]
SMOKE_ROWS = [(c, v) for c in ("llama-tiny", "gemma2-tiny") for v in ("hf-compile", "ours-compile", "ours-eager")]
SMOKE_ROWS += [("llama-tiny", "ours-compile-no-rope"), ("llama-tiny", "ours-compile" + CUDNN)]


def _graphs_allowed(config) -> int:
    """One compiled graph per distinct decoder layer (Gemma 2 alternates sliding and full attention)."""
    return len(set(getattr(config, "layer_types", None) or [None]))


def _patch(family, variant):
    import liger_kernel.transformers as lkt

    skipped = variant.removeprefix("ours-compile-no-") if "-no-" in variant else None
    flags = {OP_FLAGS[skipped]: False} if skipped else {}
    getattr(lkt, f"apply_liger_kernel_to_{family}")(**flags)


def kernel_profile(trace_events, kinds=("kernel", "gpu_memcpy", "gpu_memset")) -> dict:
    """A Chrome trace's device activity, aggregated: ``kernels`` {name: [calls, us]} (names cut to
    200 characters), ``busy_us`` (the union of their intervals: time the GPU ran anything) and
    ``span_us`` (first start to last end)."""
    events = sorted((e["ts"], e["dur"], e["name"][:200]) for e in trace_events if e.get("cat") in kinds and "dur" in e)
    kernels, busy, end = {}, 0.0, None
    for start, dur, name in events:
        calls_us = kernels.setdefault(name, [0, 0.0])
        calls_us[0] += 1
        calls_us[1] += dur
        if end is None or start >= end:
            busy += dur
            end = start + dur
        elif start + dur > end:
            busy += start + dur - end
            end = start + dur
    span = (end - events[0][0]) if events else 0.0
    return {"kernels": {k: [c, round(us, 1)] for k, (c, us) in kernels.items()}, "busy_us": busy, "span_us": span}


def _profile(step, device) -> dict:
    """One more training step under ``torch.profiler``: ``kernel_profile`` of its GPU kernels (on a
    CPU, of its operators: the pipeline only) and the step's wall time under the profiler."""
    import os
    import tempfile

    import torch

    activity = torch.profiler.ProfilerActivity
    activities = [activity.CUDA, activity.CPU] if device == "cuda" else [activity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        wall_ms = 1000 * (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    kinds = ("kernel", "gpu_memcpy", "gpu_memset") if device == "cuda" else ("cpu_op",)
    return dict(kernel_profile(events, kinds), profiled_wall_ms=wall_ms, host_ops=host_ops(prof))


def host_ops(prof, top=60) -> dict:
    """Host time by operator (and autograd Function) name: {name: [calls, inclusive us, self us]},
    the ``top`` by inclusive time: where a host-bound step spends its CPU time."""
    rows = sorted(prof.key_averages(), key=lambda e: -e.cpu_time_total)[:top]
    return {e.key[:120]: [e.count, round(e.cpu_time_total, 1), round(e.self_cpu_time_total, 1)] for e in rows}


def _cudnn_attention_first():
    """For the rest of this process, SDPA tries cuDNN's attention first (then flash, memory-efficient,
    math; torch's own order puts flash first)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    sdpa_kernel(order, set_priority=True).__enter__()


def worker(case, variant, smoke, warmup, steps, whole, profile=False):
    import torch
    import transformers

    family, _, shape, batch, seq = (e2e.SMOKE_CASES if smoke else e2e.CASES)[case]
    device = "cpu" if smoke else "cuda"
    out = {"case": case, "variant": variant, "versions": e2e._versions(), "whole": whole}
    if variant.endswith(CUDNN):
        _cudnn_attention_first()
        variant = variant.removesuffix(CUDNN)
    if variant != "hf-compile":
        _patch(family, variant)
    if smoke:  # enough layers that a recompile per layer shows
        shape = dict(shape, num_hidden_layers=4)
    config = getattr(transformers, e2e.CONFIG_CLASS[family])(**shape, use_cache=False)
    model_cls = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    attn = "sdpa" if getattr(model_cls, "_supports_sdpa", True) else "eager"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    model.to(torch.bfloat16).train()
    forward = model
    if variant.endswith("compile") or "compile-no-" in variant:
        backend = "aot_eager" if smoke else "inductor"
        if whole:
            forward = torch.compile(model, backend=backend)
        else:
            for layer in model.model.layers:
                layer.compile(backend=backend, fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    gen = torch.Generator(device).manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (warmup + steps, batch, seq), device=device, generator=gen)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    losses = []

    def step(i):
        loss = forward(input_ids=ids[i], labels=ids[i]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    t_start = time.perf_counter()
    try:
        for i in range(warmup + steps):
            if i == warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out["warmup_s"] = round(t0 - t_start, 1)
            step(i)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        out.update(status="out of memory", peak_gib=torch.cuda.max_memory_allocated() / 2**30)
        return out
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    if graphs > _graphs_allowed(config) and not whole:
        out.update(status="error", error=f"{graphs} graphs for {len(model.model.layers)} layers: recompiled per layer")
        return out
    out.update(
        status="ok",
        graphs=graphs,
        tokens_per_s=batch * seq * steps / elapsed,
        step_ms=1000 * elapsed / steps,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        losses=[float(x) for x in losses],
    )
    if profile:  # after the timed steps: the profiler's overhead stays out of tokens/s
        try:
            out["profile"] = _profile(lambda: step(warmup + steps - 1), device)
        except Exception as e:  # noqa: BLE001  (the row's timing stands without it)
            out["profile_error"] = repr(e)[:300]
    return out


def run_one(case, variant, smoke, warmup, steps, whole, timeout_s, profile=False):
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case, variant, f"--warmup={warmup}"]
    cmd += [f"--steps={steps}"] + (["--smoke"] if smoke else []) + (["--whole"] if whole else [])
    cmd += ["--profile"] if profile else []
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=e2e._env("ours"), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc = None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)] if proc else []
    if proc is None:
        r = {"case": case, "variant": variant, "status": "error", "error": f"timed out after {timeout_s} s"}
    elif lines:
        r = json.loads(lines[-1][len(RESULT) :])
    else:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        r = {"case": case, "variant": variant, "status": "error", "error": tail[-1][:300] if tail else "no output"}
        r["stderr_tail"] = "\n".join(tail)[-1500:]
    r["wall_s"] = round(time.time() - t0, 1)
    return r


def _ratio(tps, base) -> str:
    return "-" if base is None else f"{tps / base['tokens_per_s']:.2f}x"


def markdown(rows, meta) -> str:
    """One table per case: tokens/s, vs stock compiled, vs ours eager, peak memory."""
    lines = [
        f"{meta['gpu']}, {meta['date']}; torch {meta.get('torch')}, transformers {meta.get('transformers')}; "
        f"{meta['warmup']} warm-up + {meta['steps']} timed steps; bf16, fused AdamW, "
        + ("whole-model compile." if meta["whole"] else "each decoder layer compiled (fullgraph).")
    ]
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        ok = {r["variant"]: r for r in mine if r["status"] == "ok"}
        lines += ["", f"**{case}**", "", "| variant | tokens/s | vs stock compiled | vs ours eager | peak memory |"]
        lines.append("|---|---:|---:|---:|---:|")
        for r in mine:
            if r["status"] != "ok":
                lines.append(f"| {r['variant']} | {r['status']}: {r.get('error', '')[:80]} | | | |")
                continue
            tps = r["tokens_per_s"]
            stock, eager = (_ratio(tps, ok.get(v)) for v in ("hf-compile", "ours-eager"))
            peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f} GiB"
            lines.append(f"| {r['variant']} | {tps:,.0f} | {stock} | {eager} | {peak} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU (aot_eager backend)")
    ap.add_argument(
        "--rows", help="comma-separated CASE:VARIANT subset (default: all, in order), added to the results file's rows"
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; 1 with --smoke)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 5; 1 with --smoke)")
    ap.add_argument("--whole", action="store_true", help="compile the whole model, not layer by layer")
    ap.add_argument("--timeout-s", type=int, default=150, help="per row (its own process)")
    ap.add_argument(
        "--budget-s",
        type=int,
        default=None,
        help="for all rows: each row's time limit is cut to what is left, and a row with under 30 s left is "
        "skipped (recorded as such), so an outer time limit never cuts the results files short",
    )
    ap.add_argument("--profile", action="store_true", help="one more step per row under torch.profiler (GPU kernels)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<gpu>; nothing with --smoke)")
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    steps = args.steps if args.steps is not None else (1 if args.smoke else 5)
    if args.worker:
        r = worker(*args.worker, args.smoke, warmup, steps, args.whole, args.profile)
        print(RESULT + json.dumps(r), flush=True)
        return
    rows_wanted = [tuple(r.split(":")) for r in args.rows.split(",")] if args.rows else None
    rows_wanted = rows_wanted or (SMOKE_ROWS if args.smoke else ROWS)
    out = args.out
    if out is None and not args.smoke:
        from run import _gpu_slug

        out = str(HERE / "results" / _gpu_slug("cuda"))
    meta = dict(
        gpu="cpu" if args.smoke else e2e._gpu_name(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        warmup=warmup,
        steps=steps,
        whole=args.whole,
        command="python benchmarks/bench_compile.py " + " ".join(sys.argv[1:]),
    )
    rows = []
    if args.rows and out and (Path(out) / "compile.json").exists():  # a later run adds to (or redoes) rows
        rows = [
            r
            for r in json.loads((Path(out) / "compile.json").read_text())["rows"]
            if (r["case"], r["variant"]) not in rows_wanted
        ]
    deadline = None if args.budget_s is None else time.time() + args.budget_s
    for case, variant in rows_wanted:
        left = args.timeout_s if deadline is None else min(args.timeout_s, int(deadline - time.time()))
        if left < 30:
            r = {"case": case, "variant": variant, "status": "skipped", "error": f"--budget-s {args.budget_s} spent"}
            r["wall_s"] = 0.0
        else:
            r = run_one(case, variant, args.smoke, warmup, steps, args.whole, left, args.profile)
        rows.append(r)
        meta.update({k: v for k, v in r.get("versions", {}).items() if k in ("torch", "transformers")})
        what = (
            f"{r['tokens_per_s']:>10,.0f} tokens/s" if r["status"] == "ok" else r["status"] + " " + r.get("error", "")
        )
        print(f"  {case:<22} {variant:<26} {what} (warm-up {r.get('warmup_s', '-')} s, {r['wall_s']} s)", flush=True)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "compile.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
            (Path(out) / "compile.md").write_text("# Training under torch.compile\n\n" + markdown(rows, meta) + "\n")
    print("\n" + markdown(rows, meta))


if __name__ == "__main__":
    main()
