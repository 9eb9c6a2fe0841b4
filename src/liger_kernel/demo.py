"""Train a small Llama twice, stock Hugging Face and patched, and print the two runs side by side.

    python -m liger_kernel.demo [--steps N] [--device cuda|cpu] [--size tiny|small|large]

Nothing is downloaded: the model is built from a ``LlamaConfig`` with random weights, the text is
the sample shipped in ``liger_kernel/data/sample.txt`` and the tokenizer is its bytes (ids 0-255,
the rest of the vocabulary is padding, as unused rows of a real tokenizer's embedding would be).
Both runs start from the same weights and see the same batches; the patched one calls
``apply_liger_kernel_to_llama()`` before building the model, exactly as a user would.

On a GPU the default model (vocab 128256 like Llama 3, hidden 2048, 4 layers, bf16) is big enough
for the logits to dominate stock memory; on a CPU a small fp32 model runs through the PyTorch
fallback of every op (peak memory is then not measured). ``tiny`` and ``small`` train in fp32.
"""

import argparse
import gc
import importlib.resources
import math
import time
from dataclasses import dataclass

import torch

from liger_kernel.utils import interpreting

SIZES = {
    # name: (hidden, layers, heads, kv heads, intermediate, vocab, batch, seq, lr)
    "tiny": (48, 2, 4, 2, 136, 320, 2, 32, 3e-3),
    "small": (128, 2, 4, 2, 344, 2048, 4, 96, 3e-3),
    "large": (2048, 4, 16, 8, 8192, 128256, 4, 1024, 5e-4),
}
WARMUP = 2  # steps left out of tokens/s: the first ones compile the Triton kernels


@dataclass
class RunResult:
    losses: list
    tokens_per_s: float
    peak_bytes: int | None  # None on CPU: PyTorch keeps no allocator statistics there
    liger_modules: int


def sample_bytes() -> torch.Tensor:
    """The shipped text as a 1-D tensor of byte values (token ids 0-255)."""
    data = (importlib.resources.files("liger_kernel") / "data" / "sample.txt").read_bytes()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def make_batches(steps, batch, seq, seed):
    """``steps`` batches of ``[batch, seq]`` windows of the text at seeded random offsets."""
    text = sample_bytes()
    assert text.numel() > seq, f"the text sample ({text.numel()} bytes) is shorter than seq={seq}"
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, text.numel() - seq, (steps, batch), generator=gen)
    return [torch.stack([text[s : s + seq] for s in row.tolist()]) for row in starts]


def llama_config(size):
    from transformers import LlamaConfig

    hidden, layers, heads, kv_heads, intermediate, vocab, _, seq, _ = SIZES[size]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max(seq, 2048),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def build_model(config, device, dtype, state=None):
    # The class is looked up through the Auto mapping, after any class-level patch.
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.to(dtype)
    if state is not None:
        model.load_state_dict(state)
    return model


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def train(config, state, batches, device, dtype, lr) -> RunResult:
    """AdamW steps on ``batches`` from the weights ``state``; per-step losses, speed, peak memory."""
    cuda = torch.device(device).type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(config, device, dtype, state)
    model.train()
    liger_modules = sum(type(m).__module__.startswith("liger_kernel") for m in model.modules())
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, t0, tokens = [], None, 0
    warmup = WARMUP if len(batches) > WARMUP else 0
    for i, ids in enumerate(batches):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        ids = ids.to(device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if i >= warmup:
            tokens += ids.numel()
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    del model, opt
    return RunResult(losses, tokens / elapsed, peak, liger_modules)


def _gib(n):
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def report(stock: RunResult, liger: RunResult, header: str, kernels: bool = True) -> str:
    """The side-by-side table. ``kernels=False`` (a CPU run through the PyTorch fallback): both
    runs are plain PyTorch, so their tokens/s differ by noise alone (it swung from -24% to +471%
    between runs) and no ratio is printed."""
    lines = [header, "", f"{'step':>4}  {'stock HF loss':>13}  {'liger loss':>10}  {'|diff|':>8}"]
    for i, (a, b) in enumerate(zip(stock.losses, liger.losses), 1):
        lines.append(f"{i:>4}  {a:>13.4f}  {b:>10.4f}  {abs(a - b):>8.1e}")
    speed = f"{'tokens/s':<16}{stock.tokens_per_s:>14,.0f}{liger.tokens_per_s:>14,.0f}"
    if kernels:
        speed += f"  ({liger.tokens_per_s / stock.tokens_per_s - 1:+.0%})"
    else:
        speed += "  (both plain PyTorch on CPU: not a comparison)"
    lines += ["", f"{'':<16}{'stock HF':>14}{'liger':>14}", speed]
    mem = f"{'peak memory':<16}{_gib(stock.peak_bytes):>14}{_gib(liger.peak_bytes):>14}"
    if stock.peak_bytes and liger.peak_bytes:
        mem += f"  ({liger.peak_bytes / stock.peak_bytes - 1:+.0%})"
    else:
        mem += "  (measured on CUDA only)"
    lines.append(mem)
    lines.append(f"{'liger modules':<16}{stock.liger_modules:>14}{liger.liger_modules:>14}")
    return "\n".join(lines)


def run(steps=None, device=None, size=None, seed=0):
    """Both runs; returns ``(stock, liger)`` RunResults and prints the comparison."""
    from liger_kernel import transformers as lkt

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = size or ("large" if torch.device(device).type == "cuda" else "small")
    steps = steps or 30
    # bf16 as real training runs at the GPU size; fp32 for the small ones, whose losses then agree
    # with stock to rounding (the test runs the tiny one on whichever device it has).
    dtype = torch.bfloat16 if size == "large" else torch.float32
    hidden, layers, _, _, _, vocab, batch, seq, lr = SIZES[size]
    config = llama_config(size)
    batches = make_batches(steps, batch, seq, seed)

    torch.manual_seed(seed)
    state = {k: v.detach().cpu().clone() for k, v in build_model(config, device, dtype).state_dict().items()}

    stock = train(config, state, batches, device, dtype, lr)
    lkt.apply_liger_kernel_to_llama()
    try:
        liger = train(config, state, batches, device, dtype, lr)
    finally:
        revert = getattr(lkt, "revert_liger_kernel_to_llama", None)
        if revert is not None:
            revert()

    if torch.device(device).type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = "CPU, " + ("Triton interpreter" if interpreting() else "PyTorch fallback")
    header = (
        f"liger_kernel demo: Llama-style model, {layers} layers, hidden {hidden}, vocab {vocab} "
        f"(bytes of the shipped text, padded), batch {batch} x seq {seq}, {str(dtype).removeprefix('torch.')} "
        f"on {device} ({where}), {steps} AdamW steps, ln(vocab) = {math.log(vocab):.2f}"
    )
    kernels = torch.device(device).type != "cpu" or interpreting()
    text = report(stock, liger, header, kernels)
    if not kernels:
        text += (
            "\n(on a CPU both runs are plain PyTorch: the Triton kernels, their speed and memory savings need a GPU;"
            " TRITON_INTERPRET=1 set before import runs them in Triton's interpreter, slowly, to check them)"
        )
    print(text, flush=True)
    return stock, liger


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m liger_kernel.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 30)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--size", choices=list(SIZES), default=None, help="default: large on GPU, small on CPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run(args.steps, args.device, args.size, args.seed)


if __name__ == "__main__":
    main()
