"""End-to-end training benchmark: tokens/s and peak memory of whole training steps.

    python benchmarks/e2e.py                        # GPU: every case, every provider (about 4-5 min on an H100)
    python benchmarks/e2e.py --cases llama-1b-8x2048 --providers hf,ours
    python benchmarks/e2e.py --smoke                # CPU: tiny models, checks the pipeline
    python benchmarks/e2e.py --cases qwen2.5-vl-3b-4x2048,gemma3-4b-2x2048 --out ...  # vision-language

Random-init models built from a config (no downloads), bf16 weights (``model.to(bfloat16)``, as the
anchors were measured), fused AdamW (``torch.optim.AdamW(fused=True)`` on a GPU: the Hugging
Face Trainer's default optimizer, ``adamw_torch_fused``), sdpa attention, gradient checkpointing
off (stock Hugging Face's default), labels = inputs. Providers: ``hf`` (stock transformers), ``ours`` (this repo's
``apply_liger_kernel_to_<family>()`` before the model is built) and ``liger085`` (Liger Kernel
0.8.5 from ``.peer/liger085``, see ``benchmarks/setup_peers.sh``; it has our import name and the
same patch API, so the same code runs under it). Every (case, provider) is a fresh process: its
peak memory is its own and an out-of-memory or a crash stays contained. Per case: ``--warmup``
untimed steps (they compile the Triton kernels), then ``--steps`` timed ones; peak memory is
``torch.cuda.max_memory_allocated`` over all of them, weights, gradients and optimizer state
included.

Writes ``benchmarks/results/<gpu>/e2e.json``, ``e2e.md`` (the README table) and ``e2e.png``.
``benchmarks/run.py --e2e`` calls ``run()`` and ``markdown()`` from here as well.
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIBS = {"ours": REPO / "src", "liger085": REPO / ".peer" / "liger085"}
PROVIDERS = {"hf": "stock HF", "ours": "ours", "liger085": "Liger 0.8.5"}
RESULT = "@@E2E "

LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
QWEN25_15B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
# Gemma-2-2B. Attention-logit softcapping is off: sdpa cannot apply it (transformers 5.17 drops it
# silently, later releases refuse sdpa for Gemma 2). The final-logit softcapping, the part the
# fused loss must reproduce, stays on.
GEMMA2_2B = dict(
    vocab_size=256000,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    query_pre_attn_scalar=256,
    max_position_embeddings=8192,
    final_logit_softcapping=30.0,
    attn_logit_softcapping=None,
    hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
)


# Qwen2.5-VL-3B's decoder (12 of its 36 layers) with a 4-block vision tower (of 32; the last one
# full attention, the others windowed), one 448x448 image (1024 patches, 256 tokens) per sample.
QWEN25_VL_3B = dict(
    text_config=dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    vision_config=dict(
        depth=4,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=2048,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[3],
        hidden_act="silu",
    ),
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    tie_word_embeddings=True,
)
# Gemma 3 4B (vocab 262144) with 8 of its 34 decoder layers and 4 of SigLIP's 27, one 896x896 image
# (4096 patches pooled to 256 tokens) per sample.
GEMMA3_4B = dict(
    text_config=dict(
        vocab_size=262144,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        max_position_embeddings=131072,
    ),
    vision_config=dict(
        model_type="siglip_vision_model",
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=4,
        num_attention_heads=16,
        image_size=896,
        patch_size=14,
        vision_use_head=False,
    ),
    mm_tokens_per_image=256,
    image_token_index=262143,
    boi_token_index=255999,
    eoi_token_index=256000,
)
VISION_LANGUAGE = {"qwen2_5_vl", "gemma3"}

# Qwen3-30B-A3B's layer shape (128 experts, top-8, expert width 768) with 4 of its 48 layers, and
# GPT-OSS-20B's (32 experts, top-4, width 2880, clamped gating with biases) with 2 of its 24 (one
# sliding-window, one full-attention layer); real vocabularies. 4 x 2048 = 8192 tokens a step, the
# experts-kernel benchmark's (bench_moe.py) token count.
QWEN3_MOE_30B_A3B = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=6144,
    moe_intermediate_size=768,
    num_experts=128,
    num_experts_per_tok=8,
    norm_topk_prob=True,
    num_hidden_layers=4,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
GPT_OSS_20B = dict(
    vocab_size=201088,
    hidden_size=2880,
    intermediate_size=2880,
    num_local_experts=32,
    num_experts_per_tok=4,
    num_hidden_layers=2,
    num_attention_heads=64,
    num_key_value_heads=8,
    head_dim=64,
    sliding_window=128,
    tie_word_embeddings=False,
)
MOE = {"qwen3_moe", "gpt_oss"}


def _tiny(shape, vocab):
    """The same family at a size the CPU runs in seconds."""
    tiny = dict(shape, hidden_size=64, intermediate_size=136, num_hidden_layers=2, vocab_size=vocab)
    tiny.update(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if "head_dim" in tiny:
        tiny.update(head_dim=16, query_pre_attn_scalar=16)
    return tiny


# name: (family, label, config kwargs, batch, seq)
CASES = {
    "llama-1b-8x2048": ("llama", "Llama-3.2-1B (16 layers, H 2048, V 128256, tied)", LLAMA_1B, 8, 2048),
    "llama-1b-4x8192": ("llama", "Llama-3.2-1B", LLAMA_1B, 4, 8192),
    "qwen2.5-1.5b-4x2048": ("qwen2", "Qwen2.5-1.5B (28 layers, H 1536, V 151936, tied)", QWEN25_15B, 4, 2048),
    "gemma2-2b-2x2048": ("gemma2", "Gemma-2-2B (26 layers, H 2304, V 256000, softcap 30)", GEMMA2_2B, 2, 2048),
    "qwen2.5-vl-3b-4x2048": (
        "qwen2_5_vl",
        "Qwen2.5-VL-3B shape (12 layers, vision 4 blocks, V 151936), 448px image",
        QWEN25_VL_3B,
        4,
        2048,
    ),
    "gemma3-4b-2x2048": ("gemma3", "Gemma-3-4B shape (8 layers, SigLIP 4, V 262144), 896px image", GEMMA3_4B, 2, 2048),
    "qwen3-moe-30b-a3b-4x2048": (
        "qwen3_moe",
        "Qwen3-30B-A3B shape (4 layers, 128 experts top-8, width 768, V 151936)",
        QWEN3_MOE_30B_A3B,
        4,
        2048,
    ),
    "gpt-oss-20b-4x2048": (
        "gpt_oss",
        "GPT-OSS-20B shape (2 layers, 32 experts top-4, width 2880, V 201088)",
        GPT_OSS_20B,
        4,
        2048,
    ),
}
# The Qwen2.5-VL case with each library's RoPE patch off (``rope=False``): what Liger 0.8.5's in-place
# M-RoPE saves, or not, at a training step's peak memory. (Its ``rope=True`` sets the module's
# ``apply_multimodal_rotary_pos_emb``, observed on transformers 5.17, whose attention calls
# ``apply_rotary_pos_emb`` instead, the rotary embedding having merged the planes; ours sets that one.)
CASES["qwen2.5-vl-3b-4x2048-norope"] = (
    "qwen2_5_vl",
    "Qwen2.5-VL-3B shape, rope=False",
    *CASES["qwen2.5-vl-3b-4x2048"][2:],
)
# Cases with our MLPs in token shards (``tiled_mlp=True``: gate and up recomputed in the backward,
# 2 x tokens x intermediate fewer activations a layer kept); the peer has no such switch.
TILED_CASES = ("gemma3-4b-2x2048-tiled", "qwen2.5-vl-3b-4x2048-tiled", "llama-1b-4x8192-tiled")
for _tiled in TILED_CASES:
    _family, _label, *_shape = CASES[_tiled.removesuffix("-tiled")]
    CASES[_tiled] = (_family, f"{_label.split(' (')[0]}, ours with tiled_mlp=True", *_shape)
VLM_CASES = ("qwen2.5-vl-3b-4x2048", "gemma3-4b-2x2048", "qwen2.5-vl-3b-4x2048-norope")
MOE_CASES = ("qwen3-moe-30b-a3b-4x2048", "gpt-oss-20b-4x2048")  # not in the default run either
# Patch arguments beyond the defaults, per case and provider: GPT-OSS's experts are fused only with
# swiglu=True (its default is False, as in Liger Kernel 0.8.5, whose experts module has neither the
# biases nor the clamped gating: the peer runs its defaults there, experts stock).
PATCH_KWARGS = {"gpt-oss-20b-4x2048": {"ours": {"swiglu": True}}, "gpt-oss-tiny": {"ours": {"swiglu": True}}}
PATCH_KWARGS["qwen2.5-vl-3b-4x2048-norope"] = {p: {"rope": False} for p in ("ours", "liger085")}
PATCH_KWARGS.update({case: {"ours": {"tiled_mlp": True}} for case in TILED_CASES})
SMOKE_CASES = {
    "llama-tiny": ("llama", "Llama, tiny", _tiny(LLAMA_1B, 1000), 2, 64),
    "qwen2-tiny": ("qwen2", "Qwen2.5, tiny", _tiny(QWEN25_15B, 1200), 2, 64),
    "gemma2-tiny": ("gemma2", "Gemma 2, tiny, softcap 30", _tiny(GEMMA2_2B, 1500), 2, 64),
    "qwen3-moe-tiny": (
        "qwen3_moe",
        "Qwen3-MoE, tiny, 8 experts top-2",
        dict(
            _tiny(QWEN3_MOE_30B_A3B, 1100), moe_intermediate_size=24, num_experts=8, num_experts_per_tok=2, head_dim=16
        ),
        2,
        64,
    ),
    "gpt-oss-tiny": (
        "gpt_oss",
        "GPT-OSS, tiny, 4 experts top-2",
        dict(_tiny(GPT_OSS_20B, 1300), intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, head_dim=16),
        2,
        64,
    ),
}
CONFIG_CLASS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "gemma2": "Gemma2Config"}
CONFIG_CLASS.update(qwen3_moe="Qwen3MoeConfig", gpt_oss="GptOssConfig")


# ----------------------------------------------------------------------------------------------
# Worker: one (case, provider) in its own process; prints one RESULT line.


def _versions():
    import importlib.metadata

    import torch
    import transformers
    import triton

    out = {"torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__}
    try:
        out["liger-kernel"] = importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:
        pass
    return out


def _patch(family, provider, **kwargs):
    """Class-level patch before the model is built, the library's documented one line."""
    import liger_kernel

    expected = LIBS[provider].resolve()
    found = Path(liger_kernel.__file__).resolve().parents[1]
    if found != expected:
        raise RuntimeError(f"liger_kernel resolved to {liger_kernel.__file__}, expected under {expected}")
    import liger_kernel.transformers as lkt

    getattr(lkt, f"apply_liger_kernel_to_{family}")(**kwargs)
    return liger_kernel.__file__


def worker(case, provider, smoke, warmup, steps, profile=False):
    import torch
    import transformers

    family, _, shape, batch, seq = (SMOKE_CASES if smoke else CASES)[case]
    device = "cpu" if smoke else "cuda"
    out = {"case": case, "provider": provider, "versions": _versions()}
    if provider != "hf":
        out["lib_file"] = _patch(family, provider, **PATCH_KWARGS.get(case, {}).get(provider, {}))
    out["versions"] = _versions()  # after the import: the peer's own metadata, when it has one

    if family in VISION_LANGUAGE:
        config = transformers.AutoConfig.for_model(family, **shape)
        auto = transformers.AutoModelForImageTextToText
    else:
        config = getattr(transformers, CONFIG_CLASS[family])(**shape)
        auto = transformers.AutoModelForCausalLM
    model_cls = auto._model_mapping[type(config)]
    # Gemma 2 accepts sdpa in transformers 5.17 but not in later releases (its attention softcap).
    attn = "sdpa" if getattr(model_cls, "_supports_sdpa", True) else "eager"
    out["attn"] = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = auto.from_config(config, attn_implementation=attn)
    model.to(torch.bfloat16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    gen = torch.Generator(device).manual_seed(0)
    vocab = config.get_text_config().vocab_size
    ids = torch.randint(0, vocab - 300, (warmup + steps, batch, seq), device=device, generator=gen)
    out["params"] = sum(p.numel() for p in model.parameters())
    if family in MOE:  # which experts module ran, and transformers' experts implementation for its own
        experts = next((m for name, m in model.named_modules() if name.endswith(".experts")), None)
        out["experts"] = f"{type(experts).__module__}.{type(experts).__name__}" if experts else "none found"
        out["experts_implementation"] = getattr(config, "_experts_implementation", None)
    batches = [_inputs(family, config, x, gen) for x in ids]

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    losses = []

    def step(i):
        loss = model(**batches[i]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    try:
        for i in range(warmup + steps):
            if i == warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            step(i)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        out["status"] = "out of memory"
        if device == "cuda":
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return out
    out.update(
        status="ok",
        tokens_per_s=batch * seq * steps / elapsed,
        step_ms=1000 * elapsed / steps,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        losses=[float(x) for x in losses],
    )
    if profile:  # one more step under the profiler: where the GPU time goes, by kernel
        with torch.profiler.profile() as prof:
            step(warmup + steps - 1)
            if device == "cuda":
                torch.cuda.synchronize()
        sort = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70))
    return out


def _inputs(family, config, ids, gen):
    """One step's model inputs: ``labels = input_ids``; for the vision-language cases one image per
    sample, its placeholder tokens after the first token (labels -100 there) and its pixels."""
    import torch

    inputs = {"input_ids": ids, "labels": ids}
    if family not in VISION_LANGUAGE:
        return inputs
    ids, labels = ids.clone(), ids.clone()
    batch = ids.shape[0]
    if family == "gemma3":
        n_image, image_token = config.mm_tokens_per_image, config.image_token_index
        size = config.vision_config.image_size
        inputs["pixel_values"] = torch.randn(batch, 3, size, size, device=ids.device, generator=gen)
    else:
        vision = config.vision_config
        grid = 448 // vision.patch_size
        n_image, image_token = grid * grid // vision.spatial_merge_size**2, config.image_token_id
        patch = 3 * vision.temporal_patch_size * vision.patch_size**2
        inputs["pixel_values"] = torch.randn(batch * grid * grid, patch, device=ids.device, generator=gen)
        inputs["image_grid_thw"] = torch.tensor([[1, grid, grid]] * batch, device=ids.device)
        ids[:, 0] = config.vision_start_token_id
    ids[:, 1 : 1 + n_image] = image_token
    labels[:, : 1 + n_image] = -100
    types = torch.zeros_like(ids)
    types[:, 1 : 1 + n_image] = 1
    inputs.update(input_ids=ids, labels=labels)
    inputs["token_type_ids" if family == "gemma3" else "mm_token_type_ids"] = types
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    return inputs


# ----------------------------------------------------------------------------------------------
# Parent: one subprocess per (case, provider); never touches the GPU itself.


def _env(provider):
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    lib = LIBS.get(provider, LIBS["ours"])  # hf imports no liger_kernel at all
    env["PYTHONPATH"] = os.pathsep.join([str(lib), *paths])
    return env


def run_one(case, provider, smoke, warmup, steps, timeout_s):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case, provider, f"--warmup={warmup}"]
    cmd += [f"--steps={steps}"] + (["--smoke"] if smoke else [])
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=_env(provider), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"case": case, "provider": provider, "status": "error", "error": f"timed out after {timeout_s} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if lines:
        r = json.loads(lines[-1][len(RESULT) :])
    else:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        oom = any("out of memory" in ln.lower() for ln in tail)
        r = {"case": case, "provider": provider, "status": "out of memory" if oom else "error"}
        r["error"] = tail[-1][:300] if tail else f"exit code {proc.returncode}"
        r["stderr_tail"] = "\n".join(tail)[-1500:]
    r["wall_s"] = round(time.time() - t0, 1)
    return r


def run(device="cuda", level="default", cases=None, providers=None, warmup=None, steps=None, timeout_s=180, skip=()):
    """Every (case, provider) in its own process, but the ``case/provider`` pairs in ``skip``; the
    JSON-able result (``markdown()`` renders it)."""
    smoke = level == "smoke" or device == "cpu"
    table = SMOKE_CASES if smoke else CASES
    cases = cases or [c for c in table if c not in VLM_CASES + MOE_CASES + TILED_CASES]
    # The peer's kernels need a GPU (they fail in Triton's CPU interpreter): on CPU only on request.
    providers = providers or [p for p in PROVIDERS if p != "liger085" or (LIBS["liger085"].is_dir() and not smoke)]
    warmup = warmup if warmup is not None else (1 if smoke else 3)
    steps = steps if steps is not None else (2 if smoke else 4 if level == "quick" else 6)
    start = time.time()
    rows = []
    for case in cases:
        for provider in providers:
            if f"{case}/{provider}" in skip:
                continue
            r = run_one(case, provider, smoke, warmup, steps, timeout_s)
            rows.append(r)
            what = (
                f"{r['tokens_per_s']:>10,.0f} tokens/s  peak {_gib(r.get('peak_gib'))}"
                if r["status"] == "ok"
                else r["status"] + (": " + r["error"] if r.get("error") else "")
            )
            print(f"  e2e {case:<22} {PROVIDERS[provider]:<12} {what}  ({r['wall_s']:.0f} s)", flush=True)
    native = sorted((r for r in rows if "versions" in r), key=lambda r: r["provider"] == "liger085")
    versions = native[0]["versions"] if native else None
    peer = next(
        (r["versions"].get("liger-kernel") for r in rows if r["provider"] == "liger085" and "versions" in r), None
    )
    return {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device,
            "gpu": _gpu_name() if not smoke else "cpu",
            "smoke": smoke,
            "versions": versions,
            "peer_version": peer,
            "warmup": warmup,
            "steps": steps,
            "elapsed_s": round(time.time() - start, 1),
            "command": "python benchmarks/e2e.py " + " ".join(sys.argv[1:]),
        },
        "cases": {
            c: {"family": table[c][0], "label": table[c][1], "batch": table[c][3], "seq": table[c][4]} for c in cases
        },
        "providers": providers,
        "rows": rows,
    }


def _gpu_name():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        )
        return out.stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "gpu"


def _gib(x):
    return "-" if x is None else f"{x:.1f} GiB"


def _cell(r, key):
    if r is None:
        return "not run"
    if r["status"] != "ok":
        return r["status"] if key == "tokens_per_s" else "-"
    if key == "tokens_per_s":
        return f"{r['tokens_per_s']:,.0f}"
    return "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"


def markdown(result):
    """The results table (README-ready), plus the conditions it was measured under."""
    if "rows" not in result:
        return "```\n" + json.dumps(result, indent=1) + "\n```"
    m, provs = result["meta"], result["providers"]
    get = {(r["case"], r["provider"]): r for r in result["rows"]}
    head = ["model shape", "batch x seq"]
    for p in provs:
        head += [f"{PROVIDERS[p]} tokens/s", f"{PROVIDERS[p]} peak GiB"]
    ours_vs = [p for p in ("hf", "liger085") if p in provs and "ours" in provs]
    head += [f"ours vs {PROVIDERS[p]}" for p in ours_vs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case, c in result["cases"].items():
        cells = [c["label"], f"{c['batch']} x {c['seq']}"]
        for p in provs:
            r = get.get((case, p))
            cells += [_cell(r, "tokens_per_s"), _cell(r, "peak_gib")]
        ours = get.get((case, "ours"))
        for p in ours_vs:
            other = get.get((case, p))
            if ours and other and ours["status"] == other["status"] == "ok":
                speed = f"{ours['tokens_per_s'] / other['tokens_per_s'] - 1:+.0%} tokens/s"
                if ours.get("peak_gib") and other.get("peak_gib"):
                    speed += f", {ours['peak_gib'] / other['peak_gib']:.0%} memory"
                cells.append(speed)
            elif ours and ours["status"] == "ok" and other:
                cells.append(f"{PROVIDERS[p]}: {other['status']}")
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    v = m.get("versions") or {}
    attn = sorted({r.get("attn") for r in result["rows"] if r.get("attn")})
    optimizer = "fused AdamW (the Trainer's default)" if m["device"] == "cuda" else "AdamW"
    lines += [
        "",
        f"{m['gpu']}, {m['date']}; torch {v.get('torch')}, triton {v.get('triton')}, transformers "
        f"{v.get('transformers')}"
        + (f"; peer Liger Kernel {m.get('peer_version') or '0.8.5'}" if "liger085" in provs else "")
        + ". Random-init models, "
        f"bf16 weights, {optimizer}, {'/'.join(attn) or 'sdpa'} attention, "
        "no gradient checkpointing; "
        f"{m['warmup']} warm-up steps then {m['steps']} timed; peak = `torch.cuda.max_memory_allocated` "
        "(weights, gradients and optimizer state included). Each run in its own process. "
        "Gemma 2 without attention-logit softcapping (sdpa cannot apply it); final-logit softcapping on.",
    ]
    moe_rows = [r for r in result["rows"] if r.get("experts")]
    if moe_rows:
        ran = sorted({f"{r['case']}/{PROVIDERS[r['provider']]}: {r['experts'].rsplit('.', 1)[-1]}" for r in moe_rows})
        stock = sorted({str(r.get("experts_implementation")) for r in moe_rows if r["provider"] == "hf"})
        lines[-1] += (
            f" MoE: stock runs transformers' default experts implementation ({', '.join(stock) or '-'}); ours "
            "fuses GPT-OSS's experts with `swiglu=True` (default False); Liger 0.8.5 runs its defaults (its "
            "experts module has no biases or clamped gating: GPT-OSS's experts stay stock there). Experts "
            "modules: " + "; ".join(ran) + "."
        )
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    get = {(r["case"], r["provider"]): r for r in result["rows"]}
    cases, provs = list(result["cases"]), result["providers"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    width = 0.8 / len(provs)
    for ax, key, title in (
        (axes[0], "tokens_per_s", "tokens/s (higher is better)"),
        (axes[1], "peak_gib", "peak GiB (lower is better)"),
    ):
        for j, p in enumerate(provs):
            for i, case in enumerate(cases):
                r = get.get((case, p))
                x = i + (j - (len(provs) - 1) / 2) * width
                val = r.get(key) if r and r["status"] == "ok" else None
                ax.bar(x, val or 0, width, color=f"C{j}", label=PROVIDERS[p] if i == 0 else None)
                if val is not None:
                    text = f"{val / 1000:.1f}k" if key == "tokens_per_s" else f"{val:.1f}"
                    ax.text(x, val, text, ha="center", va="bottom", fontsize=7)
                if val is None:
                    ax.text(
                        x,
                        0,
                        "OOM" if r and r["status"] == "out of memory" else "n/a",
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
        ticks = [result["cases"][c] for c in cases]
        ax.set_xticks(
            range(len(cases)), [f"{t['label'].split(' (')[0]}\n{t['batch']}x{t['seq']}" for t in ticks], fontsize=8
        )
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"End-to-end training steps, {result['meta']['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check(result):
    """Sanity across providers: every finished run starts near ln(vocab) (random init, random tokens)."""
    problems = []
    for r in result["rows"]:
        if r["status"] == "ok":
            shape = (SMOKE_CASES if result["meta"]["smoke"] else CASES)[r["case"]][2]
            first, expect = r["losses"][0], math.log(shape.get("text_config", shape)["vocab_size"])
            if not math.isfinite(first) or abs(first - expect) > 1.5:
                problems.append(f"{r['case']}/{r['provider']}: first loss {first:.3f}, expected about {expect:.2f}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    ap.add_argument("--cases", help=f"comma-separated subset of {list(CASES)} (or of {list(SMOKE_CASES)} with --smoke)")
    ap.add_argument("--providers", help=f"comma-separated subset of {list(PROVIDERS)}")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; 1 with --smoke)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 6; 2 with --smoke)")
    ap.add_argument("--timeout-s", type=int, default=180, help="per (case, provider) process")
    ap.add_argument("--skip", default="", help="comma-separated case/provider pairs not to run")
    ap.add_argument(
        "--out", help="results folder (default benchmarks/results/<gpu>; with --smoke nothing is written unless given)"
    )
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "PROVIDER"), help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="with --worker: print a kernel profile of one step")
    args = ap.parse_args()
    if args.worker:
        r = worker(*args.worker, args.smoke, args.warmup, args.steps, args.profile)
        print(RESULT + json.dumps(r), flush=True)
        return

    result = run(
        device="cpu" if args.smoke else "cuda",
        level="smoke" if args.smoke else "default",
        cases=args.cases.split(",") if args.cases else None,
        providers=args.providers.split(",") if args.providers else None,
        warmup=args.warmup,
        steps=args.steps,
        timeout_s=args.timeout_s,
        skip=args.skip.split(","),
    )
    md = markdown(result)
    print("\n" + md)
    for p in _check(result):
        print("WARNING:", p)
    out = args.out
    if out is None and not args.smoke:
        sys.path.insert(0, str(HERE))
        from run import _gpu_slug

        out = str(HERE / "results" / _gpu_slug("cuda"))
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "e2e.json").write_text(json.dumps(result, indent=1))
        (out / "e2e.md").write_text("# End-to-end training\n\n" + md + "\n")
        plot(result, out / "e2e.png")
        print(f"wrote {out}/e2e.json, e2e.md, e2e.png ({result['meta']['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
