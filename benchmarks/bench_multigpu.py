"""Multi-GPU training benchmark: tokens/s and peak memory per GPU under FSDP2, DDP and DeepSpeed
ZeRO-3, stock Hugging Face vs ours vs Liger Kernel 0.8.5.

    python benchmarks/bench_multigpu.py                         # every wrapper x provider, 2 GPUs
    python benchmarks/bench_multigpu.py --wrappers fsdp2 --providers hf,ours
    torchrun --nproc_per_node 2 benchmarks/bench_multigpu.py --one fsdp2 ours   # one case (what the above runs)

The workload of issue 16: Llama-3.2-1B's layer shape (hidden 2048, MLP 8192, 32 heads, 8 KV heads)
with 8 layers and an untied 128256 vocabulary, 4 x 2048 tokens per GPU, bf16 weights, sdpa, AdamW
(fused for FSDP2/DDP; DeepSpeed's own for ZeRO-3), random tokens, labels = inputs. FSDP2:
``fully_shard`` per decoder layer and the root. Every (wrapper, provider) is a fresh ``torchrun``
of two processes; ``liger085`` runs with ``PYTHONPATH`` on ``.peer/liger085`` (see
benchmarks/setup_peers.sh), ``ours`` on this repo's ``src``. ``--warmup`` untimed steps, then
``--steps`` timed ones; ``ours-accumulate`` and ``ours-tiles`` are ours with the exact fused linear
cross-entropy's route forced (``LIGER_FLCE_EXACT_ROUTE``; ``ours``: its rule), ``ours-async-labels``
with the bad-label check on the device (``LIGER_KERNEL_CHECK_LABELS=async``); ``--rounds N`` runs the
providers' sequence N times, interleaved, and reports medians (step times move by ~1% between
runs; Liger's FSDP2 tokens/s read 123k and 180k in two sessions); tokens/s counts both
GPUs' tokens; peak memory is the larger rank's ``torch.cuda.max_memory_allocated`` over all steps.
Writes ``benchmarks/results/<gpu>/multigpu.json`` and ``multigpu.md``. ZeRO-3 runs only where
``deepspeed`` imports.
"""

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROVIDERS = {
    "hf": "stock HF",
    "ours": "ours",
    "ours-accumulate": "ours, FLCE accumulate route",
    "ours-tiles": "ours, FLCE tile route",
    "ours-async-labels": "ours, label check on the device",
    "liger085": "Liger 0.8.5",
}
DEFAULT_PROVIDERS = "hf,ours,liger085"
# ours-*: the worker's environment: LIGER_FLCE_EXACT_ROUTE (the exact fused linear cross-entropy's route; ours:
# its rule), LIGER_KERNEL_CHECK_LABELS=async (the bad-label flag asserted on the device: no host sync per step)
OURS_ENV = {
    "ours": {"LIGER_FLCE_EXACT_ROUTE": "auto"},
    "ours-accumulate": {"LIGER_FLCE_EXACT_ROUTE": "accumulate"},
    "ours-tiles": {"LIGER_FLCE_EXACT_ROUTE": "tiles"},
    "ours-async-labels": {"LIGER_FLCE_EXACT_ROUTE": "auto", "LIGER_KERNEL_CHECK_LABELS": "async"},
}
WRAPPERS = ("fsdp2", "ddp", "zero3")
RESULT = "@@MULTIGPU "
CONFIG = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=8,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
BATCH, SEQ = 4, 2048
NCCL_ENV = dict(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")


def peer_path():
    for root in (REPO, REPO.parent):  # the repo, or a copy of its files one folder down
        if (root / ".peer" / "liger085").is_dir():
            return root / ".peer" / "liger085"
    return None


def build(provider, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if provider != "hf":
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama()
    config = LlamaConfig(**CONFIG)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16).train()


def one(wrapper, provider, warmup, steps):
    """One case on this torchrun rank; rank 0 prints the result line."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    model = build(provider, device)
    if wrapper == "zero3":
        import deepspeed

        ds_config = {
            "train_micro_batch_size_per_gpu": BATCH,
            "bf16": {"enabled": True},
            "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True, "adam_w_mode": True}},
        }
        engine, *_ = deepspeed.initialize(model=model, config=ds_config)

        def step(ids):
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            return loss
    else:
        dist.init_process_group("nccl", device_id=device)
        if wrapper == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model, device_ids=[device.index])
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in model.model.layers:
                fully_shard(layer)
            wrapped = fully_shard(model)
        optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-5, fused=True)

        def step(ids):
            loss = wrapped(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

    g = torch.Generator(device=device).manual_seed(1234 + rank)
    batches = [torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ), device=device, generator=g) for _ in range(2)]
    losses = []
    for i in range(warmup):
        losses.append(step(batches[i % 2]).detach())
    torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % 2])
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30], device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    first = losses[0].float()
    dist.all_reduce(first)
    if rank == 0:
        tokens = world * BATCH * SEQ * steps
        result = dict(
            wrapper=wrapper,
            provider=provider,
            tokens_per_s=tokens / elapsed,
            step_ms=1e3 * elapsed / steps,
            peak_gib=peak.item(),
            first_loss=first.item() / world,
        )
        print(RESULT + json.dumps(result), flush=True)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(wrapper, provider, args):
    env = {**os.environ, **NCCL_ENV}
    env.update(OURS_ENV.get(provider, {}))
    path = REPO / "src" if provider in OURS_ENV else {"liger085": peer_path()}.get(provider)
    if provider == "liger085" and path is None:
        return dict(wrapper=wrapper, provider=provider, error="no .peer/liger085 (bash benchmarks/setup_peers.sh)")
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not p.rstrip("/").endswith("src")]
    env["PYTHONPATH"] = os.pathsep.join(([str(path)] if path else []) + kept)  # one liger_kernel at most
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.gpus), "--master_port"]
    cmd += [str(free_port()), __file__, "--one", wrapper, provider]
    cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(wrapper=wrapper, provider=provider, error=f"timed out after {args.timeout} s")
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    tail = (done.stdout + done.stderr).strip().splitlines()[-40:]
    print("\n".join(tail), file=sys.stderr)
    errors = [line for line in tail if "Error" in line or "error" in line]
    return dict(wrapper=wrapper, provider=provider, error=(errors or tail or ["no output"])[-1][-300:])


def median_run(runs):
    """One case's runs as one result: the median step time (its tokens/s), the largest peak memory,
    every run's tokens/s under ``rounds``; the first error if any run failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ranked = sorted(runs, key=lambda r: r["step_ms"])
    middle = dict(ranked[(len(ranked) - 1) // 2])
    middle["peak_gib"] = max(r["peak_gib"] for r in runs)
    middle["rounds"] = [r["tokens_per_s"] for r in runs]
    return middle


def markdown(results, gpu_name, args):
    lines = [
        f"# Multi-GPU training ({gpu_name})",
        "",
        f"{datetime.date.today().isoformat()}; benchmarks/bench_multigpu.py: Llama-3.2-1B layer shape, 8 layers, "
        f"untied 128256 vocabulary, {BATCH}x{SEQ} tokens per GPU, bf16, AdamW; {args.warmup} warm-up and "
        f"{args.steps} timed "
        "steps. Tokens/s counts both GPUs; peak memory is per GPU (the larger rank's). Loss: the first step's mean.",
        "",
        "| wrapper | provider | tokens/s | step (ms) | peak memory (GiB) | first loss | tokens/s vs Liger "
        "| memory vs Liger |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["wrapper"], r["provider"]): r for r in results}
    for r in results:
        rounds = r.get("rounds", [])
        rounds = f" (rounds: {', '.join(f'{t / 1e3:.1f}k' for t in rounds)})" if len(rounds) > 1 else ""
        if "error" in r:
            lines.append(f"| {r['wrapper']} | {PROVIDERS[r['provider']]} | failed: {r['error']} | | | | | |")
            continue
        peer = by.get((r["wrapper"], "liger085"), {})
        speed = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x" if "tokens_per_s" in peer else ""
        memory = f"{r['peak_gib'] / peer['peak_gib']:.3f}x" if "peak_gib" in peer else ""
        lines.append(
            f"| {r['wrapper']} | {PROVIDERS[r['provider']]} | {r['tokens_per_s'] / 1e3:.1f}k{rounds} | "
            f"{r['step_ms']:.1f} | {r['peak_gib']:.2f} | {r['first_loss']:.4f} | {speed} | {memory} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("WRAPPER", "PROVIDER"), help="run one case (under torchrun)")
    parser.add_argument("--wrappers", default=",".join(WRAPPERS))
    parser.add_argument("--providers", default=DEFAULT_PROVIDERS, help=f"comma-separated, of: {', '.join(PROVIDERS)}")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=90, help="seconds per case")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every case, interleaved; medians reported")
    parser.add_argument("--gpu-name", default="2x H200")
    parser.add_argument("--out", default=str(HERE / "results" / "h200"))
    args = parser.parse_args()
    if args.one:
        return one(*args.one, args.warmup, args.steps)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        deepspeed = None
    results = []
    for wrapper in args.wrappers.split(","):
        if wrapper == "zero3" and deepspeed is None:
            print("bench_multigpu: deepspeed does not import: ZeRO-3 skipped", file=sys.stderr)
            continue
        runs = {provider: [] for provider in args.providers.split(",")}
        for _ in range(args.rounds):
            for provider, done in runs.items():
                done.append(launch(wrapper, provider, args))
                print(json.dumps(done[-1]), flush=True)
        results += [median_run(done) for done in runs.values()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multigpu.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "multigpu.md").write_text(markdown(results, args.gpu_name, args))
    print(markdown(results, args.gpu_name, args))


if __name__ == "__main__":
    main()
