"""Session 15: qwen3_5_moe fp32 (the convergence test's model and batches) trained float64, stock,
stock with rounding moved (two coin seeds) and patched (all ops / without the fused loss / without the
norms): per trained parameter and first gradient, each run's largest error against float64 over the
largest of the stock samples'. Prints the median and the top ratios per run."""

import copy
import sys

sys.path.insert(0, "tests")
import torch  # noqa: E402
from test_convergence import float64_copy, second_stock_run, text_inputs, train  # noqa: E402
from test_convergence_moe import build_moe  # noqa: E402

from liger_kernel.transformers import monkey_patch  # noqa: E402

T = "qwen3_5_moe"
stock = build_moe(T, torch.float32)
untrained, initial = copy.deepcopy(stock), copy.deepcopy(stock.state_dict())
model64 = float64_copy(stock)


def outcome(model, run):
    grads = {f"grad {k}": v for k, v in run[1].items()}
    return grads | {f"param {k}": p.detach() for k, p in model.named_parameters() if p.requires_grad}


exact = outcome(model64, train(model64))
samples = {"stock": outcome(stock, train(stock))}
for seed in (None, 7, 8):
    model, run = second_stock_run(untrained, model64, text_inputs, seed)
    samples[f"stock-{seed}"] = outcome(model, run)
runs = {}
VARIANTS = {"all": {}, "no-flce": {"fused_linear_cross_entropy": False}, "no-norm": {"rms_norm": False}}
for name, flags in VARIANTS.items():
    monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN[T](**flags)
    patched = build_moe(T, torch.float32)
    patched.load_state_dict(initial)
    runs[name] = outcome(patched, train(patched))
    getattr(monkey_patch, f"revert_liger_kernel_to_{T}")()


def err(d, k):
    return (d[k].double() - exact[k].double()).abs().max().item()


for name, got in {**runs, **{s: samples[s] for s in samples}}.items():
    ratios = []
    for k in exact:
        others = [err(v, k) for s, v in samples.items() if s != name]
        ratios.append((err(got, k) / max(max(others), 1e-30), k))
    ratios.sort(reverse=True)
    median = sorted(r for r, _ in ratios)[len(ratios) // 2]
    print(f"{name}: median {median:.2f}; top " + ", ".join(f"{r:.2f} {k}" for r, k in ratios[:4]), flush=True)
