"""The floor of one Llama-3.2-1B 8x2048 training step (issue 15): every part of the step timed alone at
its exact shape, summed, beside the real compiled steps (stock and ours) and where their GPU time goes.

    python benchmarks/compile_floor.py                 # GPU: the two real rows (~70 s), parts and candidates (~80 s)
    python benchmarks/compile_floor.py --real benchmarks/results/h200/compile.json  # real rows from there
    python benchmarks/compile_floor.py --smoke         # CPU: tiny shapes, checks the pipeline (no timing claims)

Parts (bf16; ``benchmarks/e2e.py``'s case: sdpa, fused AdamW, tied head): each linear's forward matmul
and its two backward ones (dX = dY W, dW = dY^T X) per layer type and for the 128256-wide head; SDPA
forward+backward (causal, GQA, the backend torch picks, as Hugging Face calls it); fused AdamW over
every parameter; the embedding's forward and backward and the tied weight's gradient sum; the
residual adds (two a layer forward, two gradient sums backward); our kernels: RMSNorm, RoPE and the
fused MLP's gated kernels (forward, backward with c recomputed) at their step shapes, and the fused
linear cross-entropy, whose part here is its whole time minus the head's three matmuls timed alone.
Each part is a median of CUDA-graph replays (``triton.testing.do_bench_cudagraph``), or of event-timed
calls (``do_bench``, after warm-up) where a graph cannot be captured (fused AdamW). Their sum is the
floor: what the step costs with no gap between kernels and nothing done twice. Two cross-checks: the
matmul and copy rates measured here (the peaks the parts are judged against), and one step's matmuls
replayed back to back in one graph (sustained clocks, against the sum of the isolated ones). And
candidates, not in the floor: SDPA per backend, q/k/v and gate/up each as one wider matmul.

The real steps are ``bench_compile.py``'s rows (``hf-compile``, ``ours-compile``: each decoder layer
compiled, fullgraph) with ``--profile``: one more step under ``torch.profiler``, its kernels grouped
into categories, plus GPU idle = the timed step minus the union of kernel intervals.

Writes ``compile_floor.json`` and ``compile_floor.md`` to ``--out`` (default
benchmarks/results/<gpu>; nothing with ``--smoke`` unless given).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_compile  # noqa: E402
import e2e  # noqa: E402

CASE, SMOKE_CASE = "llama-1b-8x2048", "llama-tiny"
REAL_VARIANTS = ("hf-compile", "ours-compile")  # run here when no --real file; from one, ours-eager too
BAR = 1.15  # issue 15: ours compiled >= 1.15x stock compiled tokens/s
CATEGORIES = ("gemm", "attention", "ours (Triton)", "Inductor (Triton)", "optimizer", "embedding", "torch loss")
CATEGORIES += ("copies/other",)
# Substrings of kernel names (lower case), checked in this order after ours (by name); Inductor's by prefix.
_MATCHERS = (
    ("optimizer", ("adam", "multi_tensor_apply")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "splitk", "gemv", "triton_tem_")),
    ("embedding", ("embedding", "indexselect", "index_select", "radixsort", "segment", "grad_weight", "scatter")),
    ("torch loss", ("softmax", "nll_loss", "cross_entropy")),  # stock's loss on the logits
)


def categorize(name: str, ours: set) -> str:
    """The category of a profiled kernel: ``ours`` holds our Triton kernels' function names."""
    if name in ours:
        return "ours (Triton)"
    low = name.lower()
    for category, keys in _MATCHERS:
        if any(k in low for k in keys):
            return category
    return "Inductor (Triton)" if name.startswith("triton_") else "copies/other"


def our_kernel_names() -> set:
    """The function names of every Triton kernel in ``liger_kernel.ops`` (as the profiler names them)."""
    import importlib
    import pkgutil

    import liger_kernel.ops as ops

    names = set()
    for info in pkgutil.iter_modules(ops.__path__):
        try:
            module = importlib.import_module(f"liger_kernel.ops.{info.name}")
        except ImportError:
            continue
        for obj in vars(module).values():
            if not type(obj).__module__.startswith("triton"):
                continue
            while hasattr(obj, "fn"):  # Autotuner / Heuristics -> JITFunction -> the Python function
                obj = obj.fn
            if hasattr(obj, "__name__"):
                names.add(obj.__name__)
    return names


def breakdown(profile: dict, ours: set) -> dict:
    """ms per category of one profiled step; ``busy``: the union of kernel intervals."""
    ms = dict.fromkeys(CATEGORIES, 0.0)
    for name, (_, us) in profile["kernels"].items():
        ms[categorize(name, ours)] += us / 1000
    return dict(ms, busy=profile["busy_us"] / 1000, span=profile["span_us"] / 1000)


# ----------------------------------------------------------------------------------------------
# Timing


def timer(smoke: bool):
    """``time(fn, grads) -> (ms, method)``: a median of CUDA-graph replays, of event-timed calls where
    no graph can be captured, or (``smoke``) of a few CPU calls."""
    import torch

    def cpu(fn, grads=(), graph=True):
        fn()
        times = []
        for _ in range(2):
            for g in grads:
                g.grad = None
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times), "cpu"

    def syncs(fn) -> bool:
        """Whether ``fn`` waits for the GPU somewhere (a host read): such a call cannot be captured."""
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
        except RuntimeError:
            return True
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return False

    def gpu(fn, grads=(), graph=True):
        import triton.testing as tt

        grads = list(grads) or None
        fn()  # first call: compiles and autotunes, outside the sync check and the capture
        if graph and not syncs(fn):
            try:
                return tt.do_bench_cudagraph(fn, rep=60, grad_to_none=grads, return_mode="median"), "graph"
            except Exception:  # noqa: BLE001  (then call by call)
                torch.cuda.synchronize()
        return tt.do_bench(fn, warmup=50, rep=300, grad_to_none=grads, return_mode="median"), "events"

    return cpu if smoke else gpu


def peaks(device, dtype, smoke: bool) -> dict:
    """The ceilings the parts are judged against, measured here: a square bf16 matmul (TFLOP/s) and a
    device-to-device copy (GB/s, bytes read plus written)."""
    import torch

    time_it = timer(smoke)
    n = 256 if smoke else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    mm_ms, _ = time_it(lambda: a @ b)
    src = torch.randn(2**20 if smoke else 2**29, device=device, dtype=dtype)  # 1 GiB in bf16
    dst = torch.empty_like(src)
    copy_ms, _ = time_it(lambda: dst.copy_(src))
    return {"tflops": 2 * n**3 / mm_ms / 1e9, "gbps": 2 * src.numel() * src.element_size() / copy_ms / 1e6}


# ----------------------------------------------------------------------------------------------
# The parts of one step


def shapes(case: str, smoke: bool) -> dict:
    _, _, cfg, batch, seq = (e2e.SMOKE_CASES if smoke else e2e.CASES)[case]
    if smoke:  # Triton's interpreter runs a program at a time: few rows
        batch, seq = 1, 16
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return dict(
        H=cfg["hidden_size"], I=cfg["intermediate_size"], L=cfg["num_hidden_layers"], V=cfg["vocab_size"],
        heads=heads, kv=kv, D=head_dim, B=batch, S=seq, N=batch * seq, eps=cfg.get("rms_norm_eps", 1e-6),
    )  # fmt: skip


def linears(s: dict) -> list:
    """(name, in, out, per step) of every linear of the step; the tied head last."""
    H, inter, L, qd, kvd = s["H"], s["I"], s["L"], s["heads"] * s["D"], s["kv"] * s["D"]
    layer = [("q_proj", H, qd), ("k_proj", H, kvd), ("v_proj", H, kvd), ("o_proj", qd, H)]
    layer += [("gate_proj", H, inter), ("up_proj", H, inter), ("down_proj", inter, H)]
    return [(n, i, o, L) for n, i, o in layer] + [("lm_head", H, s["V"], 1)]


def _hf_layout(B, S, heads, D, rand):
    """A [B, heads, S, D] leaf needing a gradient, with the strides of Hugging Face's
    ``view(B, S, heads, D).transpose(1, 2)``."""
    return rand(B, S, heads, D).transpose(1, 2).detach().requires_grad_()


def measure_parts(s: dict, device, dtype, smoke: bool) -> list:
    """Every part of the step, timed alone: dicts of part, group, count, ms, work, unit, method. Each
    group's tensors live only while it is timed."""
    import torch

    time_it = timer(smoke)
    parts = []

    def add(part, group, count, fn, work, unit, grads=(), graph=True):
        try:
            ms, method = time_it(fn, grads, graph)
        except Exception as e:  # noqa: BLE001  (the other parts still count; the floor says it is incomplete)
            ms, method = float("nan"), f"failed: {e!r}"[:100]
        parts.append(dict(part=part, group=group, count=count, ms=ms, work=work, unit=unit, method=method))
        print(f"  {part:<44} x{count:<3} {ms:9.4f} ms ({method})", flush=True)

    def rand(*shape, grad=False):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)

    for measure in (_matmuls, _attention, _norm_rope, _swiglu, _flce, _embedding_residual, _adamw):
        try:
            measure(s, rand, add, parts)
        except Exception as e:  # noqa: BLE001  (setting up its tensors failed)
            failed = dict(part=measure.__name__.strip("_"), group="failed", count=1, ms=float("nan"), work=0)
            parts.append(dict(failed, unit="byte", method=f"failed: {e!r}"[:100]))
        if device == "cuda":
            torch.cuda.empty_cache()
    return parts


def _linear_matmuls(N, n_in, n_out, rand) -> dict:
    """A linear's three matmuls on fresh operands: forward Y = X W^T, backward dX = dY W, dW = dY^T X."""
    x, w, dy = rand(N, n_in), rand(n_out, n_in) / math.sqrt(n_in), rand(N, n_out)
    return {"fwd": lambda: x @ w.T, "dX": lambda: dy @ w, "dW": lambda: dy.T @ x}


def _matmuls(s, rand, add, parts):
    N = s["N"]
    for name, n_in, n_out, count in linears(s):
        group = "lm_head matmuls" if name == "lm_head" else "layer matmuls"
        for what, fn in _linear_matmuls(N, n_in, n_out, rand).items():
            label = f"{name} {what}" + (f" [{N}x{n_in}]@[{n_in}x{n_out}]" if what == "fwd" else "")
            add(label, group, count, fn, 2 * N * n_in * n_out, "flop")


def _attention(s, rand, add, parts):
    """SDPA as Hugging Face's sdpa integration calls it without a mask: causal, ``enable_gqa``."""
    import torch.nn.functional as F

    B, S, D, heads = s["B"], s["S"], s["D"], s["heads"]
    q, k, v = (_hf_layout(B, S, h, D, rand) for h in (heads, s["kv"], s["kv"]))
    do = rand(B, S, heads, D).transpose(1, 2)  # as o_proj's dX arrives

    def attention():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(do)

    flop = 3.5 * 2 * B * heads * S * S * D  # causal: forward 2 matmuls, backward 5, half the square each
    add("SDPA fwd+bwd (causal, GQA)", "attention", s["L"], attention, flop, "flop", (q, k, v))


def _norm_rope(s, rand, add, parts):
    import torch

    from liger_kernel.transformers.functional import liger_rms_norm, liger_rope

    B, S, H, D = s["B"], s["S"], s["H"], s["D"]
    x, w, dy = rand(B, S, H, grad=True), rand(H, grad=True), rand(B, S, H)
    work = 5 * x.numel() * x.element_size()  # X read, Y written; X and dY read, dX written
    add(
        "RMSNorm fwd+bwd",
        "ours",
        2 * s["L"] + 1,
        lambda: liger_rms_norm(x, w, s["eps"]).backward(dy),
        work,
        "byte",
        (x, w),
    )
    q, k = (_hf_layout(B, S, h, D, rand) for h in (s["heads"], s["kv"]))
    cos, sin = rand(B, S, D), rand(B, S, D)
    dq, dk = (rand(B, S, h, D).transpose(1, 2) for h in (s["heads"], s["kv"]))  # as SDPA's backward gives them

    def rope():
        torch.autograd.backward(liger_rope(q, k, cos, sin), (dq, dk))

    work = 4 * (q.numel() + k.numel()) * q.element_size()
    add("RoPE fwd+bwd (q and k)", "ours", s["L"], rope, work, "byte", (q, k))


def _swiglu(s, rand, add, parts):
    """The fused MLP's gated kernels: forward, and backward writing da, db and c (over dc)."""
    from liger_kernel.ops.swiglu import gated_backward, gated_forward

    a, b, dc, da, db = (rand(s["N"], s["I"]) for _ in range(5))
    wide = a.numel() * a.element_size()
    add("SwiGLU fwd (c = silu(a) * b)", "ours", s["L"], lambda: gated_forward(a, b, "silu"), 3 * wide, "byte")

    def backward():
        gated_backward(dc, a, b, "silu", da, db, store_c=True)

    add("SwiGLU bwd (da, db; c over dc)", "ours", s["L"], backward, 6 * wide, "byte")


def _flce(s, rand, add, parts):
    """The fused linear cross-entropy, whole, minus the head's three matmuls timed alone."""
    import torch

    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    N, H, V, S = s["N"], s["H"], s["V"], s["S"]
    x, w = rand(N, H, grad=True), (rand(V, H) / math.sqrt(H)).requires_grad_()
    target = torch.randint(0, V, (N,), device=x.device)
    target[S - 1 :: S] = -100  # the last position of each sequence has no next token

    def flce():
        liger_fused_linear_cross_entropy(x, w, target, loss_dtype=torch.float32).backward()

    try:
        whole_ms, method = timer(x.device.type == "cpu")(flce, (x, w))
    except Exception as e:  # noqa: BLE001
        whole_ms, method = float("nan"), f"failed: {e!r}"[:100]
    head_ms = sum(p["ms"] for p in parts if p["group"] == "lm_head matmuls")
    logits = 2 * N * V * x.element_size()  # the logits' gradient written over them and read once: the least
    part = dict(part="FLCE minus the head's 3 matmuls", group="ours", count=1, ms=max(whole_ms - head_ms, 0.0))
    parts.append(dict(part, work=logits, unit="byte", method=method, whole_ms=whole_ms))
    print(f"  {'FLCE fwd+bwd, whole':<44} x1   {whole_ms:9.4f} ms ({method}); its head matmuls {head_ms:.4f} ms")


def _embedding_residual(s, rand, add, parts):
    """The embedding, the tied weight's gradient sum (embedding + head) and the residual stream's adds
    (two a layer forward, two gradient sums backward)."""
    import torch
    import torch.nn.functional as F

    B, S, H, V, N = s["B"], s["S"], s["H"], s["V"], s["N"]
    ids = torch.randint(0, V, (B, S), device=rand(1).device)
    emb, dy = rand(V, H, grad=True), rand(B, S, H)
    size = dy.element_size()
    work = (4 * N * H + V * H) * size  # rows read and written forward; dY read, rows added, the zeroed gradient

    add("embedding fwd+bwd", "embedding", 1, lambda: F.embedding(ids, emb).backward(dy), work, "byte", (emb,))
    g1, g2 = rand(V, H), rand(V, H)
    add("tied weight: gradient sum", "embedding", 1, lambda: g1 + g2, 3 * V * H * size, "byte")
    r1, r2 = rand(N, H), rand(N, H)
    add("residual add / gradient sum", "other", 4 * s["L"], lambda: r1 + r2, 3 * N * H * size, "byte")


def _adamw(s, rand, add, parts):
    """Fused AdamW (on a GPU) over every parameter of the model, its state already there."""
    import torch

    params = [torch.nn.Parameter(rand(o, i) * 0.02) for _, i, o, count in linears(s)[:-1] for _ in range(count)]
    params += [torch.nn.Parameter(rand(s["H"]) + 1) for _ in range(2 * s["L"] + 1)]
    params.append(torch.nn.Parameter(rand(s["V"], s["H"]) * 0.02))  # the tied embedding / head
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-5, fused=params[0].is_cuda)
    opt.step()  # the state exists, as in every step after the first
    # param, grad, exp_avg, exp_avg_sq read; param, exp_avg, exp_avg_sq written (state in the params' dtype)
    work = 7 * sum(p.numel() for p in params) * params[0].element_size()
    # Not captured: fused AdamW refuses graph capture unless built with capturable=True.
    add("AdamW step (fused), all parameters", "optimizer", 1, opt.step, work, "byte", graph=False)


def measure_candidates(s: dict, device, dtype, smoke: bool, parts: list) -> list:
    """Other ways to run parts of the step, timed alone: each SDPA backend, and q/k/v and gate/up
    as one matmul each (their weights concatenated: ~10 us a layer). Dicts of candidate, now_ms and
    alt_ms (per step), or error."""
    import torch

    time_it = timer(smoke)

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    per_step = {p["part"].split(" [")[0]: p["ms"] * p["count"] for p in parts}
    found = _attention_backends(s, rand, time_it, per_step["SDPA fwd+bwd (causal, GQA)"])
    found += _stock_under_inductor(s, rand, time_it, per_step, "aot_eager" if smoke else "inductor")
    for merged, names in (("q, k, v", ("q_proj", "k_proj", "v_proj")), ("gate, up", ("gate_proj", "up_proj"))):
        n_out = sum(o for n, _, o, _ in linears(s) if n in names)
        for what, fn in _linear_matmuls(s["N"], s["H"], n_out, rand).items():
            now = sum(per_step[f"{n} {what}"] for n in names)
            alt = time_it(fn)[0] * s["L"]
            found.append(dict(candidate=f"{merged} as one matmul, {what} [{n_out} wide]", now_ms=now, alt_ms=alt))
    for c in found:
        print(f"  {c['candidate']:<52} {c.get('alt_ms', c.get('error'))}", flush=True)
    return found


def _stock_under_inductor(s, rand, time_it, per_step, backend) -> list:
    """Hugging Face's RMSNorm, RoPE and SwiGLU activation as ``torch.compile`` compiles them (what an
    ``ours-compile-no-<op>`` row runs), forward+backward at the step's shapes, against ours. Inductor's
    SwiGLU keeps c = silu(a) * b from the forward for the down projection's weight gradient (ours
    recomputes it: one [N, I] tensor a layer less), which this isolated timing does not charge."""
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    B, S, H, D, L = s["B"], s["S"], s["H"], s["D"], s["L"]
    x, dy = rand(B, S, H).requires_grad_(), rand(B, S, H)
    norm = LlamaRMSNorm(H, eps=s["eps"]).to(device=x.device, dtype=x.dtype)
    q, k = (_hf_layout(B, S, h, D, rand) for h in (s["heads"], s["kv"]))
    cos, sin = rand(B, S, D), rand(B, S, D)
    dq, dk = (rand(B, S, h, D).transpose(1, 2) for h in (s["heads"], s["kv"]))
    a, b, dc = (rand(s["N"], s["I"]) for _ in range(3))
    a.requires_grad_(), b.requires_grad_()
    rope, silu_mul = (
        torch.compile(apply_rotary_pos_emb, backend=backend),
        torch.compile(lambda a, b: F.silu(a) * b, backend=backend),
    )
    norm.compile(backend=backend)
    cases = (
        ("RMSNorm fwd+bwd", 2 * L + 1, lambda: norm(x).backward(dy), (x, norm.weight), ["RMSNorm fwd+bwd"]),
        (
            "RoPE fwd+bwd",
            L,
            lambda: torch.autograd.backward(rope(q, k, cos, sin), (dq, dk)),
            (q, k),
            ["RoPE fwd+bwd (q and k)"],
        ),
        (
            "SwiGLU fwd+bwd",
            L,
            lambda: silu_mul(a, b).backward(dc),
            (a, b),
            ["SwiGLU fwd (c = silu(a) * b)", "SwiGLU bwd (da, db; c over dc)"],
        ),
    )
    found = []
    for name, count, fn, grads, ours in cases:
        entry = dict(candidate=f"{name}, stock under {backend}", now_ms=sum(per_step[o] for o in ours))
        try:
            fn()  # compiles, outside any timing or graph capture
            entry["alt_ms"] = time_it(fn, grads)[0] * count
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{e!r}"[:80]
        found.append(entry)
    return found


def _attention_backends(s, rand, time_it, now_ms) -> list:
    """SDPA forward+backward per backend, with ``enable_gqa``, else (unsupported) with k and v
    repeated per query head first, as Hugging Face's ``repeat_kv`` does."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, S, D, heads, L = s["B"], s["S"], s["D"], s["heads"], s["L"]
    q, k, v = (_hf_layout(B, S, h, D, rand) for h in (heads, s["kv"], s["kv"]))
    do = rand(B, S, heads, D).transpose(1, 2)  # as o_proj's dX arrives
    found = []
    for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        for gqa in (True, False):

            def attention(backend=backend, gqa=gqa):
                kk, vv = (k, v) if gqa else (t.repeat_interleave(heads // s["kv"], dim=1) for t in (k, v))
                with sdpa_kernel(getattr(SDPBackend, backend)):
                    F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa).backward(do)

            entry = dict(candidate=f"SDPA fwd+bwd, {backend.lower()}, " + ("enable_gqa" if gqa else "k/v repeated"))
            entry["now_ms"] = now_ms
            try:
                entry["alt_ms"] = time_it(attention, (q, k, v))[0] * L
            except RuntimeError as e:
                entry["error"] = str(e).splitlines()[0][:80]
                if q.is_cuda:
                    torch.cuda.synchronize()
            found.append(entry)
            if "alt_ms" in entry:
                break
    return found


def matmuls_back_to_back(s: dict, device, dtype, smoke: bool) -> float:
    """One step's matmuls in step order (forward, then backward) replayed in one CUDA graph: ms."""
    import torch

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    ops = [(count, _linear_matmuls(s["N"], n_in, n_out, rand)) for _, n_in, n_out, count in linears(s)]

    def step():
        for count, fns in ops:
            for _ in range(count):
                fns["fwd"]()
        for count, fns in reversed(ops):
            for _ in range(count):
                fns["dX"]()
                fns["dW"]()

    return timer(smoke)(step)[0]


# ----------------------------------------------------------------------------------------------
# Report


def _real_rows(args, smoke: bool) -> dict:
    """variant: ``bench_compile`` row (with a ``profile``), from ``--real`` or run here."""
    case = SMOKE_CASE if smoke else CASE
    if args.real:
        if not Path(args.real).exists():
            print(f"  no {args.real}: the floor alone", flush=True)
            return {}
        rows = json.loads(Path(args.real).read_text())["rows"]
        wanted = (*REAL_VARIANTS, "ours-eager")
        return {r["variant"]: r for r in rows if r["case"] == case and r["variant"] in wanted}
    found = {}
    for variant in REAL_VARIANTS:
        r = bench_compile.run_one(case, variant, smoke, args.warmup, args.steps, False, args.timeout_s, profile=True)
        print(f"  real step {variant}: {r['status']} {r.get('step_ms', r.get('error', ''))}", flush=True)
        found[variant] = r
    return found


def summarize(parts, peak, back_to_back_ms, real, s, ours) -> dict:
    for p in parts:
        p["ms_step"] = p["ms"] * p["count"]
        rate = p["work"] / p["ms"] / 1e9 if p["ms"] > 0 else float("nan")  # TFLOP/s or TB/s
        p["rate"] = rate if p["unit"] == "flop" else rate * 1000  # GB/s
        p["of_peak"] = p["rate"] / (peak["tflops"] if p["unit"] == "flop" else peak["gbps"])
    floor_ms = sum(p["ms_step"] for p in parts if math.isfinite(p["ms_step"]))
    matmul_ms = sum(p["ms_step"] for p in parts if p["group"].endswith("matmuls"))
    ideal_matmul_ms = (
        sum(p["work"] * p["count"] for p in parts if p["group"].endswith("matmuls")) / peak["tflops"] / 1e9
    )
    out = dict(
        tokens=s["N"], floor_ms=floor_ms, floor_tokens_per_s=s["N"] / floor_ms * 1000, matmul_ms=matmul_ms,
        matmul_at_peak_ms=ideal_matmul_ms, matmuls_back_to_back_ms=back_to_back_ms, real={},
        failed=[p["part"] for p in parts if not math.isfinite(p["ms_step"])],
    )  # fmt: skip
    for variant, r in real.items():
        entry = {"status": r["status"]}
        if r["status"] == "ok":
            entry.update(step_ms=r["step_ms"], tokens_per_s=r["tokens_per_s"], peak_gib=r.get("peak_gib"))
            if r.get("profile"):
                cats = breakdown(r["profile"], ours)
                entry.update(categories=cats, idle_ms=r["step_ms"] - cats["busy"])
                top = sorted(r["profile"]["kernels"].items(), key=lambda kv: -kv[1][1])[:12]
                entry["top_kernels"] = [[name, calls, us / 1000, categorize(name, ours)] for name, (calls, us) in top]
        else:
            entry["error"] = r.get("error", "")
        out["real"][variant] = entry
    stock = out["real"].get("hf-compile", {})
    if "tokens_per_s" in stock:
        out["bar_tokens_per_s"] = BAR * stock["tokens_per_s"]
        out["bar_step_ms"] = s["N"] / out["bar_tokens_per_s"] * 1000
    return out


# Which floor parts each profile category is set against.
_FLOOR_OF = {
    "gemm": ("layer matmuls", "lm_head matmuls"),
    "attention": ("attention",),
    "ours (Triton)": ("ours",),
    "optimizer": ("optimizer",),
    "embedding": ("embedding",),
    "copies/other": ("other",),
}


def markdown(result) -> str:
    m, parts, sm = result["meta"], result["parts"], result["summary"]
    pk = result["peak"]
    lines = [
        f"{m['gpu']}, {m['date']}; torch {m.get('torch')}, triton {m.get('triton')}; case {m['case']} "
        f"({sm['tokens']} tokens a step), {m['dtype']}. Measured peaks: matmul {pk['tflops']:.0f} TFLOP/s, "
        f"copy {pk['gbps']:.0f} GB/s." + (" **Smoke run (CPU, tiny shapes): no timing claims.**" if m["smoke"] else ""),
        "",
        "**Parts, each timed alone** (median; graph = CUDA-graph replay, events = call by call)",
        "",
        "| part | per step | ms each | ms per step | achieved | of peak | timing |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in parts:
        rate = f"{p['rate']:.0f} TFLOP/s" if p["unit"] == "flop" else f"{p['rate']:.0f} GB/s"
        lines.append(
            f"| {p['part']} | {p['count']} | {p['ms']:.4f} | {p['ms_step']:.2f} | {rate} | {p['of_peak']:.0%} | "
            f"{p['method']} |"
        )
    lines.append(f"| **floor (sum)** | | | **{sm['floor_ms']:.1f}** | {sm['floor_tokens_per_s']:,.0f} tokens/s | | |")
    if sm["failed"]:
        lines += ["", f"**Incomplete floor**: these parts failed and are left out: {', '.join(sm['failed'])}."]
    lines += [
        "",
        f"Matmuls: {sm['matmul_ms']:.1f} ms a step timed alone, {sm['matmuls_back_to_back_ms']:.1f} ms replayed back "
        f"to back in one graph, {sm['matmul_at_peak_ms']:.1f} ms at the measured peak.",
        "",
        "**Real steps** (bench_compile.py rows: each decoder layer compiled, fullgraph)",
        "",
        "| variant | step ms | tokens/s | floor / step | peak memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, r in sm["real"].items():
        if r["status"] != "ok":
            lines.append(f"| {variant} | {r['status']}: {r.get('error', '')[:80]} | | | |")
            continue
        mem = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f} GiB"
        ratio = sm["floor_ms"] / r["step_ms"]
        lines.append(f"| {variant} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {ratio:.0%} | {mem} |")
    if "bar_tokens_per_s" in sm:
        lines.append(
            f"| **bar: {BAR}x hf-compile** | {sm['bar_step_ms']:.1f} | {sm['bar_tokens_per_s']:,.0f} | "
            f"{sm['floor_ms'] / sm['bar_step_ms']:.0%} | |"
        )
        verdict = "above" if sm["floor_tokens_per_s"] > sm["bar_tokens_per_s"] else "BELOW"
        lines += ["", f"The floor ({sm['floor_tokens_per_s']:,.0f} tokens/s) is {verdict} the bar."]
    if result["candidates"]:
        lines += ["", "**Candidates** (timed alone, ms per step; not in the floor)", ""]
        lines += ["| candidate | now | alternative | saving |", "|---|---:|---:|---:|"]
    for c in result["candidates"]:
        if "alt_ms" in c:
            lines.append(
                f"| {c['candidate']} | {c['now_ms']:.2f} | {c['alt_ms']:.2f} | {c['now_ms'] - c['alt_ms']:+.2f} |"
            )
        else:
            lines.append(f"| {c['candidate']} | {c['now_ms']:.2f} | {c['error']} | |")
    profiled = {v: r for v, r in sm["real"].items() if r.get("categories")}
    if profiled:
        floor_by = {c: sum(p["ms_step"] for p in parts if p["group"] in groups) for c, groups in _FLOOR_OF.items()}
        lines += ["", "**Where the GPU time goes** (one profiled step, ms of kernel time per category)", ""]
        lines.append("| category | " + " | ".join(profiled) + " | floor |")
        lines.append("|---|" + "---:|" * (len(profiled) + 1))
        for c in CATEGORIES:
            floor = floor_by.get(c)
            cells = [f"{r['categories'][c]:.1f}" for r in profiled.values()]
            lines.append(f"| {c} | " + " | ".join(cells) + f" | {'-' if floor is None else f'{floor:.1f}'} |")
        for key, label in (("busy", "GPU busy (union of kernels)"), ("span", "first kernel to last")):
            lines.append(
                f"| {label} | " + " | ".join(f"{r['categories'][key]:.1f}" for r in profiled.values()) + " | |"
            )
        idle = " | ".join(f"{r['idle_ms']:.1f}" for r in profiled.values())
        step = " | ".join(f"{r['step_ms']:.1f}" for r in profiled.values())
        lines += [f"| GPU idle (timed step - busy) | {idle} | |", f"| step (timed) | {step} | {sm['floor_ms']:.1f} |"]
        for variant, r in profiled.items():
            lines += ["", f"Top kernels, {variant}:", "", "| kernel | calls | ms | category |", "|---|---:|---:|---|"]
            lines += [f"| `{n[:90]}` | {c} | {ms:.2f} | {cat} |" for n, c, ms, cat in r["top_kernels"]]
    return "\n".join(lines)


def write(result, out) -> str:
    """The markdown; with ``out``, it and the JSON written there."""
    md = markdown(result)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "compile_floor.json").write_text(json.dumps(result, indent=1))
        (Path(out) / "compile_floor.md").write_text("# Floor of a compiled training step\n\n" + md + "\n")
    return md


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (fp32, Triton's interpreter)")
    ap.add_argument("--real", help="take the real rows (with their profile) from this compile.json")
    ap.add_argument("--warmup", type=int, default=2, help="real rows: untimed steps")
    ap.add_argument("--steps", type=int, default=4, help="real rows: timed steps")
    ap.add_argument("--timeout-s", type=int, default=150, help="real rows: per row")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<gpu>; nothing with --smoke)")
    args = ap.parse_args(argv)
    # The real rows first, in their own processes, before this one holds GPU memory.
    real = _real_rows(args, args.smoke)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # our kernels on the CPU, before they are imported
    import torch
    import triton

    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    case = SMOKE_CASE if args.smoke else CASE
    s = shapes(case, args.smoke)
    torch.manual_seed(0)
    peak = peaks(device, dtype, args.smoke)
    print(f"  peaks: matmul {peak['tflops']:.0f} TFLOP/s, copy {peak['gbps']:.0f} GB/s", flush=True)
    parts = measure_parts(s, device, dtype, args.smoke)
    if device == "cuda":
        torch.cuda.empty_cache()
    back_to_back = matmuls_back_to_back(s, device, dtype, args.smoke)
    meta = dict(
        gpu="cpu" if args.smoke else e2e._gpu_name(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        torch=torch.__version__, triton=triton.__version__, case=case, dtype=str(dtype).removeprefix("torch."),
        smoke=args.smoke, command="python benchmarks/compile_floor.py " + " ".join(argv or sys.argv[1:]),
    )  # fmt: skip
    result = dict(meta=meta, shapes=s, peak=peak, parts=parts, candidates=[])
    result["summary"] = summarize(parts, peak, back_to_back, real, s, our_kernel_names())
    out = args.out
    if out is None and not args.smoke:
        from run import _gpu_slug

        out = str(HERE / "results" / _gpu_slug("cuda"))
    write(result, out)  # the floor first: a time limit during the candidates keeps it
    try:  # extras: a failure here must not cost the floor
        result["candidates"] = measure_candidates(s, device, dtype, args.smoke, parts)
    except Exception as e:  # noqa: BLE001
        result["candidates"] = [dict(candidate="candidates", now_ms=0.0, error=f"failed: {e!r}"[:160])]
    print("\n" + write(result, out))
    return result


if __name__ == "__main__":
    main()
