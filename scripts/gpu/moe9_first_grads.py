"""Which patched module moves a MoE family's first-step gradients off float64 (issue 14's GPU misses).

For each ``family:dtype`` given, at the convergence test's sizes for this machine (GPU: tests/test_convergence.py's
1024-hidden 4-layer model): the float64 stock run, the stock run in the dtype (eager attention) and a second
equally valid stock run (SDPA attention, batch rows reversed), then the model patched with each flag alone and
with all of them; one forward + backward on the tests' first batch. Prints, per variant, its error against
float64 relative to the larger stock error, for the embedding and the ten worst parameters:

    PYTHONPATH=src python scripts/gpu/moe9_first_grads.py qwen3_5_moe:fp32 gpt_oss:fp32 qwen3_next:bf16
"""

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import conftest  # noqa: E402,F401 (the interpreter on CPU)
import torch  # noqa: E402
from parity import ON_GPU  # noqa: E402
from test_convergence import float64_copy, make_batch, with_sdpa  # noqa: E402
from test_convergence_moe import build_moe  # noqa: E402

from liger_kernel.transformers import monkey_patch  # noqa: E402
from liger_kernel.transformers.model_specs import MODEL_SPECS  # noqa: E402
from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OFF = dict(rope=False, rms_norm=False, swiglu=False, fused_linear_cross_entropy=False, cross_entropy=False)


def first_grads(model, flip=False):
    model.train()
    ids, labels = make_batch(100)
    if flip:
        ids, labels = ids.flip(0), labels.flip(0)
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.detach().double() for n, p in model.named_parameters() if p.grad is not None}
    grads["loss"] = out.loss.detach().double().reshape(1)
    return grads


def variants(model_type):
    spec = MODEL_SPECS[model_type]
    rope = ON_GPU and spec.rope is not None
    out = {
        "norms": OFF | {"rms_norm": True},
        "mlp": OFF | {"swiglu": True},
        "loss": OFF | {"fused_linear_cross_entropy": True},
    }
    if rope:
        out["rope"] = OFF | {"rope": True}
    out["all"] = {"rope": rope, "swiglu": True}
    return out


def report(model_type, dtype_name):
    dtype = DTYPES[dtype_name]
    stock = build_moe(model_type, dtype)
    g64 = first_grads(float64_copy(stock))
    sdpa = copy.deepcopy(stock)
    with_sdpa(sdpa)
    stock_runs = [first_grads(copy.deepcopy(stock)), first_grads(sdpa, flip=True)]

    def error(g, k):
        return (g[k] - g64[k]).abs().max().item()

    base = {k: max(error(s, k) for s in stock_runs) for k in g64}
    embed = "model.embed_tokens.weight"
    relative = base[embed] / g64[embed].abs().max().item()
    print(f"== {model_type} {dtype_name}: stock embedding gradient error {relative:.2e} of its scale", flush=True)
    for label, flags in variants(model_type).items():
        model = copy.deepcopy(stock)
        _apply_liger_kernel_to_instance(model, **flags)
        grads = first_grads(model)
        getattr(monkey_patch, f"revert_liger_kernel_to_{model_type}")(model=model)  # the class forward and RoPE
        ratios = {k: error(grads, k) / max(base[k], 1e-300) for k in g64}
        worst = sorted(ratios, key=ratios.get, reverse=True)[:10]
        shown = ", ".join(f"{k} {ratios[k]:.2f}x" for k in ["model.embed_tokens.weight", "loss", *worst])
        print(f"  {label:6s} {shown}", flush=True)


if __name__ == "__main__":
    for case in sys.argv[1:] or ["qwen3_5_moe:fp32"]:
        report(*case.split(":"))
