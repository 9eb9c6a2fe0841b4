"""Benchmark runner: one command measures every op against its peers and writes the report.

    python benchmarks/run.py --out benchmarks/results/h100            # default sweeps
    python benchmarks/run.py --quick --ops rms_norm,swiglu            # fewer shapes, some ops
    python benchmarks/run.py --device cpu --smoke --out /tmp/smoke    # tiny shapes on CPU

This parent process never touches the GPU: it starts one worker process per library and feeds
it tasks (op, shape, provider) over stdin; each worker prints one JSON line per result.
- ``native``: this repo's ``liger_kernel`` (``src/`` first on PYTHONPATH): ours, eager, compile.
- ``liger085``: Liger Kernel 0.8.5 from ``.peer/liger085`` (same import name, so its own process).
- ``cce``: Apple's cut-cross-entropy from ``.peer/cce`` (fused linear cross-entropy only).
A worker that dies (illegal memory access, segfault, timeout) is restarted for the remaining
tasks; the task it died on is recorded as an error, as are OOMs and import errors.

Per task: one checked call on fresh inputs (norms of the output and of every gradient, compared
across providers in the report; also the compile/JIT warm-up), the peak extra memory of one
forward+backward, then forward, backward and forward+backward times (``triton.testing.do_bench``
medians with 20/80% quantiles on CUDA; a host timer on CPU). Results merge into
``<out>/results.json`` (ops run earlier into the same folder are kept), then ``report.py`` writes
``results.md`` and one PNG per op.
"""

import argparse
import datetime
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GROUPS = {"native": REPO / "src", "liger085": REPO / ".peer" / "liger085", "cce": REPO / ".peer" / "cce"}
PREFIX = "@@"
MIN_SAMPLES = 20  # timed calls per measurement, however long one call takes


def group_of(provider: str) -> str:
    return provider if provider in ("liger085", "cce") else "native"


# ----------------------------------------------------------------------------------------------
# Worker side: runs in a process whose `liger_kernel` is the library under test.


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def worker_meta(group, device):
    import torch
    import triton

    meta = {
        "group": group,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": _version("transformers"),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    lib = "cut_cross_entropy" if group == "cce" else "liger_kernel"
    try:
        mod = __import__(lib)
        meta["lib_file"] = mod.__file__
        meta["lib_version"] = getattr(mod, "__version__", None) or _version(lib.replace("_", "-"))
        expected = GROUPS[group].resolve()
        if Path(mod.__file__).resolve().parents[1] != expected:
            meta["lib_error"] = f"{lib} resolved to {mod.__file__}, expected under {expected}"
    except Exception as e:  # recorded; every task of this worker then reports it
        meta["lib_error"] = f"{type(e).__name__}: {e}"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        meta["sm_count"] = props.multi_processor_count
    return meta


class Timer:
    def __init__(self, device, warmup, rep):
        self.device, self.warmup, self.rep = device, warmup, rep

    def __call__(self, fn):
        """[median, p20, p80] in ms."""
        if self.device == "cuda":
            import torch
            from triton.testing import do_bench

            # At least MIN_SAMPLES timed calls: do_bench's rep is milliseconds, so a 40 ms op would
            # get 2 samples, and the GPU's first second of heavy matmuls runs at a higher clock
            # than the steady state (fused linear CE: 37.6 ms then 40.2 ms).
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            est = (time.perf_counter() - t0) * 1e3
            warmup, rep = max(self.warmup, 5 * est), max(self.rep, MIN_SAMPLES * est)
            return [float(t) for t in do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])]
        t0 = time.perf_counter()
        fn()  # CPU: host clock around a few calls (one when a call is slow, as interpreted kernels are)
        times = []
        for _ in range(3 if time.perf_counter() - t0 < 0.2 else 1):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return _quantiles(times)

    def after(self, setup, fn):
        """[median, p20, p80] ms of ``fn(setup())``, timing ``fn`` alone: the backward of a fresh
        forward each time, as in training (a retained graph can't be reused by in-place backwards,
        torch.compile's donated buffers or the reference fallback)."""
        import torch

        if self.device != "cuda":
            times = []
            for _ in range(3):
                arg = setup()
                t0 = time.perf_counter()
                fn(arg)
                times.append((time.perf_counter() - t0) * 1e3)
                del arg
            return _quantiles(times)
        # the same L2 flush, warm-up and repetition rule as do_bench, counting the untimed setup
        # in each iteration's cost so that a cheap fn after an expensive setup stays bounded
        cache = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            fn(setup())
        torch.cuda.synchronize()
        per_iter = max((time.perf_counter() - t0) * 1e3 / 3, 1e-3)
        n_warm = max(5, int(self.warmup / per_iter))
        n_rep = min(max(MIN_SAMPLES, int(self.rep / per_iter)), 1000)
        events = []
        for i in range(n_warm + n_rep):
            arg = setup()
            cache.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(arg)
            end.record()
            del arg
            if i >= n_warm:
                events.append((start, end))
        torch.cuda.synchronize()
        return _quantiles([s.elapsed_time(e) for s, e in events])


def _quantiles(times):
    """[median, p20, p80] of a list of ms."""
    times = sorted(times)
    at = lambda q: times[min(int(q * (len(times) - 1) + 0.5), len(times) - 1)]  # noqa: E731
    return [at(0.5), at(0.2), at(0.8)]


def measure_ceilings(device, timer):
    """Copy bandwidth (bytes read + written) and the bf16 matmul rate, on this device."""
    import torch

    def copy_ms(n_bytes):
        x = torch.randn(n_bytes // 2, device=device).to(torch.bfloat16)
        y = torch.empty_like(x)
        return timer(lambda: y.copy_(x))[0]

    def matmul_ms(n):
        a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
        return timer(lambda: torch.mm(a, b, out=c))[0]

    n_bytes, n = (2**30, 8192) if device == "cuda" else (2**24, 256)
    copy_ms, mm_ms = copy_ms(n_bytes), matmul_ms(n)
    return {
        "copy_bytes": 2 * n_bytes,
        "copy_ms": copy_ms,
        "copy_tbps": 2 * n_bytes / copy_ms / 1e9,
        "matmul_n": n,
        "matmul_ms": mm_ms,
        "matmul_tflops": 2 * n**3 / mm_ms / 1e9,
    }


def _describe(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _norm_and_finite(t):
    """The float64 2-norm of ``t`` and whether it's all finite, in chunks: a float64 copy of a
    [8192, 256000] gradient would take 16 GB."""
    import torch

    total, finite = 0.0, True
    for chunk in t.detach().reshape(-1).split(1 << 26):
        total += float(chunk.double().square().sum())
        finite = finite and bool(torch.isfinite(chunk).all())
    return total**0.5, finite


def graph_time(fn, calls=10, reps=7):
    """Median ms of one ``fn()`` replayed from a CUDA graph of ``calls`` back-to-back calls: GPU
    time alone, free of CPU launch overhead (METHOD.md: many small launches)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    return sorted(times)[reps // 2]


def provider_calls(op, p, provider, device):
    """``(fwd, bwd, fwd_bwd)`` of one provider on seeded inputs (the same in every process):
    ``fwd()`` -> the outputs as a tuple, ``bwd(outs)`` -> the gradients of the inputs that take one."""
    import bench_ops
    import torch

    torch.manual_seed(0)
    args, grad_idx, grad_outs = op.inputs(p, device)
    gin = [args[i] for i in grad_idx]
    fn = bench_ops.provider_fn(op, p, provider)

    def fwd():
        out = fn(*args)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def bwd(outs):
        return torch.autograd.grad(outs, gin, grad_outs)

    return fwd, bwd, lambda: bwd(fwd())


def run_task(task, device, timer, meta):
    import bench_ops
    import torch

    res = {k: task[k] for k in ("op", "case", "provider")}
    if time.time() > task["deadline"]:
        return {**res, "status": "skipped", "error": "time budget spent"}
    if meta.get("lib_error"):
        return {**res, "status": "error", "error": meta["lib_error"]}
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:  # hand back what the last task cached (after an OOM, say): each task starts clean
        gc.collect()
        torch.cuda.empty_cache()
    op = bench_ops.OPS[task["op"]]
    p = task["params"]
    state = {}
    try:
        if task["provider"] == "compile":
            torch._dynamo.reset()
        fwd, bwd, fwd_bwd = provider_calls(op, p, task["provider"], device)
        # checked call on fresh inputs (in-place providers overwrite them later); also the warm-up
        t0 = time.perf_counter()
        outs = fwd()
        grads = bwd(outs)
        sync()
        res["first_call_s"] = time.perf_counter() - t0
        checked = [_norm_and_finite(t) for t in (*outs, *grads)]
        res["norms"] = [n for n, _ in checked]
        res["finite"] = all(f for _, f in checked)
        del outs, grads
        gc.collect()

        if cuda:  # peak extra memory of one forward + backward (outputs and gradients included)
            sync()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            state["r"] = fwd_bwd()
            sync()
            res["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del state["r"]

        res["fwd_ms"] = timer(fwd)
        res["bwd_ms"] = timer.after(fwd, bwd)
        res["full_ms"] = timer(fwd_bwd)
        res["status"] = "ok"
        if cuda:  # the kernels' own time, without this machine's CPU launch overhead
            try:
                res["graph_ms"] = graph_time(fwd_bwd)
            except Exception as e:  # e.g. a host sync inside the op: not capturable
                res["graph_error"] = _describe(e)
                res["fatal"] = True  # a failed capture leaves the RNG and allocator unusable: restart
    except Exception as e:
        msg = _describe(e)
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        res["status"] = "oom" if oom else "error"
        res["error"] = msg
        res["fatal"] = cuda and any(s in str(e) for s in ("CUDA error", "illegal memory", "unspecified launch"))
    finally:
        state.clear()
    return res


def worker_main(args):
    sys.path.insert(0, str(HERE))
    emit = lambda kind, obj: print(PREFIX + kind + " " + json.dumps(obj), flush=True)  # noqa: E731
    meta = worker_meta(args.worker, args.device)
    emit("meta", meta)
    timer = Timer(args.device, args.warmup, args.rep)
    for line in sys.stdin:
        for task in json.loads(line):
            if task["op"] == "_ceilings":
                try:
                    res = {"op": "_ceilings", "status": "ok", **measure_ceilings(args.device, timer)}
                except Exception as e:
                    res = {"op": "_ceilings", "status": "error", "error": f"{type(e).__name__}: {e}"[:300]}
            else:
                res = run_task(task, args.device, timer, meta)
            emit("result", res)
            if res.get("fatal"):
                sys.exit(3)  # a broken CUDA context: let the parent start a fresh process
        emit("done", {})


# ----------------------------------------------------------------------------------------------
# Parent side.


class Worker:
    """One long-lived worker process for a provider group, restarted when it dies."""

    def __init__(self, group, args):
        self.group, self.args = group, args
        self.proc, self.meta, self.dead = None, None, None
        self.log = Path(args.out) / f"worker_{group}.log"

    def _env(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        ours = str(REPO / "src")
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != Path(ours)]
        env["PYTHONPATH"] = os.pathsep.join([str(GROUPS[self.group])] + rest)
        if self.args.device == "cpu" and self.group != "native":
            env["TRITON_INTERPRET"] = "1"  # the peers have no CPU fallback: run their kernels interpreted
        return env

    def _start(self):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", self.group, "--device", self.args.device]
        cmd += ["--warmup", str(self.args.warmup), "--rep", str(self.args.rep)]
        self.err = open(self.log, "a")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, env=self._env(), cwd=REPO
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()
        kind, obj = self._next(max(self.args.task_timeout_s, 120))
        if kind != "meta":
            self._stop()
            self.dead = f"worker {self.group} failed to start ({kind}): {self._stderr_tail()}"
            return
        self.meta = obj

    @staticmethod
    def _pump(proc, lines):
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _next(self, timeout):
        """The next protocol message: (kind, obj), ("eof", None) or ("timeout", None)."""
        waited = 0.0
        while True:
            try:
                line = self.lines.get(timeout=2.0)
            except queue.Empty:
                # a dead worker whose pipe stays open (inherited by its compile workers) is dead too
                if self.proc.poll() is not None and self.lines.empty():
                    return "eof", None
                waited += 2.0
                if waited >= timeout:
                    return "timeout", None
                continue
            if line is None:
                return "eof", None
            if line.startswith(PREFIX):
                kind, _, payload = line[len(PREFIX) :].partition(" ")
                return kind, json.loads(payload)
            print(f"    [{self.group}] {line.rstrip()}")

    def _stderr_tail(self):
        self.err.flush()
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-3:])[-400:] if text else "(no stderr)"

    def _stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=5)  # one that is exiting on its own
            except subprocess.TimeoutExpired:
                self.proc.kill()  # the worker this runner started, by its own handle
                self.proc.wait()
        self.proc = None

    def run(self, tasks, on_result):
        pending = list(tasks)
        while pending:
            if self.proc is None and not self.dead:
                self._start()
            if self.dead:
                for t in pending:
                    on_result({**_key(t), "status": "error", "error": self.dead})
                return
            try:
                self.proc.stdin.write(json.dumps(pending) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            while True:  # until the worker says the batch is done (or dies)
                kind, obj = self._next(self.args.task_timeout_s)
                if kind == "result":
                    fatal = obj.get("fatal")
                    on_result(obj)
                    pending = [t for t in pending if _key(t) != _key(obj)]
                    if fatal:  # the worker exits after a broken CUDA context: a fresh one takes the rest
                        self._stop()
                        break
                elif kind == "done":
                    break
                else:  # died or hung on pending[0]: record it, restart for the rest
                    why = "timed out" if kind == "timeout" else f"worker died: {self._stderr_tail()}"
                    self._stop()
                    if pending:
                        on_result({**_key(pending[0]), "status": "error", "error": why})
                        pending = pending[1:]
                    break
            if pending and self.proc is not None and self.proc.poll() is not None:
                self.proc = None

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._stop()


def _key(t):
    return {"op": t["op"], "case": t.get("case"), "provider": t.get("provider")}


def _git_commit():
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return None


def source_hash() -> str:
    """sha1 (12 hex digits) of the package's sources: identifies the code measured even where the
    machine's git metadata is stale (the lent GPU machine's copy reports an old commit). Compare
    with ``python benchmarks/run.py --source-hash`` on a checkout."""
    digest = hashlib.sha1()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def floor_ms(kind, amount, ceilings):
    if not ceilings:
        return None
    rate = ceilings["copy_tbps"] * 1e9 if kind == "bytes" else ceilings["matmul_tflops"] * 1e9  # per ms
    return amount / rate


def merge_round(kept: dict, new: dict) -> None:
    """Fold a later round's result into the kept row: each timing keeps the round with the lower
    median (CPU interference only ever adds time), peak memory the larger value; every round's
    fwd+bwd median is listed in ``full_ms_rounds``."""
    if new.get("status") != "ok":
        return
    if kept.get("status") != "ok":
        kept.clear()
        kept.update(new)
        return
    kept.setdefault("full_ms_rounds", [kept["full_ms"][0]]).append(new["full_ms"][0])
    for k in ("fwd_ms", "bwd_ms", "full_ms"):
        if new[k][0] < kept[k][0]:
            kept[k] = new[k]
    if new.get("graph_ms") is not None:
        kept["graph_ms"] = min(new["graph_ms"], kept.get("graph_ms") or float("inf"))
    if new.get("peak_mb") is not None:
        kept["peak_mb"] = max(new["peak_mb"], kept.get("peak_mb") or 0.0)


def _rotated(items: list, k: int) -> list:
    return items[k % len(items) :] + items[: k % len(items)] if items else items


def run_op(op, level, providers, workers, meta, deadline, results, rounds=1):
    """Every (shape, provider) task of one op, through the workers: the op's results entry."""
    import bench_ops

    t_op = time.time()
    cases = op.cases(level)
    shapes = {c: op.shape_str(p) for c, p in cases}
    provs = [pr for pr in op.providers if providers is None or pr in providers]
    rows = []
    by_key = {}

    def on_result(r):
        r.pop("fatal", None)
        key = (r["case"], r["provider"])
        if key in by_key:
            merge_round(by_key[key], r)
        else:
            by_key[key] = r
            rows.append(r)
        head = f"  {op.name:<27} {shapes[r['case']]:<32} {r['provider']:<9}"
        if r["status"] == "ok":
            mem = f"{r['peak_mb']:.0f} MB" if r.get("peak_mb") is not None else ""
            print(f"{head} fwd+bwd {r['full_ms'][0]:9.3f} ms  {mem}", flush=True)
        else:
            print(f"{head} {r['status']}: {r.get('error', '')}", flush=True)

    # Case by case, every library's process in turn, so that the providers of one shape are timed
    # seconds apart (the lent machine's CPU speed drifts, and small shapes are CPU-bound); each
    # round repeats the whole sweep, with the processes and the providers in each taking turns to
    # go first, and a row keeps its best round (merge_round).
    for r in range(rounds):
        for c, p in cases:
            for group in _rotated(list(GROUPS), r):
                tasks = [
                    {"op": op.name, "case": c, "params": p, "provider": pr, "deadline": deadline}
                    for pr in _rotated(provs, r)
                    if group_of(pr) == group
                ]
                if tasks:
                    workers[group].run(tasks, on_result)
    entry = {
        "title": op.title,
        "notes": op.notes,
        "providers": provs,
        "anchor": bench_ops.case_id(op.anchor(level)),
        "sweeps": [
            {"name": s.name, "x_label": s.x_label, "points": [[x, bench_ops.case_id(p)] for x, p in s.points]}
            for s in op.sweeps(level)
        ],
        "cases": {},
        "rows": rows,
        "meta": {**meta, "elapsed_s": round(time.time() - t_op, 1)},
        "workers": {g: w.meta for g, w in workers.items() if w.meta and any(group_of(pr) == g for pr in provs)},
    }
    for c, p in cases:
        kind, amount = op.floor(p)
        entry["cases"][c] = {
            "params": p,
            "shape": shapes[c],
            "floor_kind": kind,
            "floor_amount": amount,
            "floor_ms": floor_ms(kind, amount, meta["ceilings"]),
        }
    for r in rows:
        r["date"] = meta["date"]
        f = entry["cases"][r["case"]]["floor_ms"]
        r["pct_floor"] = 100 * f / r["full_ms"][0] if f and r.get("full_ms") else None
    old = results["ops"].get(op.name)
    if old and old["meta"].get("level") == level:  # keep rows of providers not run this time
        entry["rows"] += [r for r in old["rows"] if r["provider"] not in provs and r["case"] in entry["cases"]]
        entry["providers"] = [pr for pr in op.providers if pr in provs or pr in old["providers"]]
    print(f"  ({op.name}: {entry['meta']['elapsed_s']:.0f} s)", flush=True)
    return entry


def parent_main(args):
    import bench_ops
    import report

    level = "smoke" if args.smoke else "quick" if args.quick else "full" if args.full else "default"
    ops = args.ops.split(",") if args.ops else list(bench_ops.OPS)
    unknown = [o for o in ops if o not in bench_ops.OPS and o != "e2e"]
    if unknown:
        sys.exit(f"unknown ops {unknown}; choose from {list(bench_ops.OPS)} (or e2e)")
    providers = args.providers.split(",") if args.providers else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + args.budget_s if args.budget_s else 1e18
    if not all(GROUPS[g].is_dir() for g in ("liger085", "cce")):  # unpack the carried wheels (offline)
        subprocess.run(["bash", str(HERE / "setup_peers.sh")], check=False)
    workers = {g: Worker(g, args) for g in GROUPS}

    got = []
    workers["native"].run([{"op": "_ceilings"}], got.append)
    ceilings = got[0] if got and got[0].get("status") == "ok" else None
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "level": level,
        "device": args.device,
        "gpu": (workers["native"].meta or {}).get("device"),
        "versions": {k: (workers["native"].meta or {}).get(k) for k in ("python", "torch", "triton", "transformers")},
        "commit": _git_commit(),
        "source_sha1": source_hash(),
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        "timing": f"do_bench(warmup=max({args.warmup} ms, 5 calls), rep=max({args.rep} ms, {MIN_SAMPLES} calls)) "
        f"median [p20, p80], best of {args.rounds} round(s)"
        if args.device == "cuda"
        else "host timer, median of 3 calls",
        "ceilings": ceilings,
        "ceilings_error": None if ceilings else (got[0].get("error") if got else "no result"),
    }
    what = report.fmt_ceilings(ceilings) if ceilings else meta["ceilings_error"]
    print(f"== {meta['gpu']}, level {level}; ceilings: {what}")

    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"ops": {}}
    results["meta"] = meta
    for name in ops:
        if name != "e2e":
            results["ops"][name] = run_op(
                bench_ops.OPS[name], level, providers, workers, meta, deadline, results, args.rounds
            )
            path.write_text(json.dumps(results, indent=1))  # after every op: a killed run keeps what it has
    for w in workers.values():
        w.close()

    if "e2e" in ops or args.e2e:
        # Hook for the end-to-end training benchmark (benchmarks/e2e.py, another change):
        # it provides run(device, level) -> dict (JSON-able) and markdown(result) -> str.
        try:
            import e2e

            results["e2e"] = e2e.run(device=args.device, level=level)
        except Exception as e:
            results["e2e"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        path.write_text(json.dumps(results, indent=1))

    report.write(out, results)
    print(f"\n== {meta['gpu']}, {meta['date']}, level {level}, {time.time() - start:.0f} s; {out}/results.md")
    print(f"== ceilings: {report.fmt_ceilings(meta['ceilings'])}")
    print("== fwd+bwd ms (% of floor); MB = peak extra memory; ours/Liger = time ratio, memory ratio")
    print(report.summary_text(results, [o for o in ops if o in results["ops"]]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="results folder (default benchmarks/results/<gpu>)")
    ap.add_argument("--ops", help="comma-separated subset of ops (default: all); 'e2e' adds the training benchmark")
    ap.add_argument("--providers", help="comma-separated subset of providers (default: all)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="3 points per sweep (anchor included)")
    size.add_argument("--full", action="store_true", help="default sweeps plus the largest shapes")
    size.add_argument("--smoke", action="store_true", help="tiny shapes, for checking the pipeline on CPU")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu (with --smoke)")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each sweep; every timing keeps its best round")
    ap.add_argument("--source-hash", action="store_true", help="print the hash of src/ that results record, and exit")
    ap.add_argument("--budget-s", type=float, default=None, help="skip tasks that would start after this many s")
    ap.add_argument("--task-timeout-s", type=float, default=300, help="restart a worker silent for this long")
    ap.add_argument("--e2e", action="store_true", help="also run benchmarks/e2e.py (when present)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.source_hash:
        print(source_hash())
        return
    if args.device is None:
        args.device = "cpu" if args.smoke else "cuda"
    if args.worker:
        return worker_main(args)
    if args.out is None:
        args.out = str(HERE / "results" / _gpu_slug(args.device))
    sys.path.insert(0, str(HERE))
    parent_main(args)


def _gpu_slug(device):
    if device != "cuda":
        return "cpu"
    try:
        name = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "gpu"
    for tag in ("h200", "h100", "b200", "a100", "l40s", "a10g"):
        if tag in name.lower():
            return tag
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


if __name__ == "__main__":
    main()
