"""Is the patched run one more sample of stock's rounding noise, or systematically off? (issue 14:
Qwen3.5-MoE fp32 first gradients up to 3.1x over the convergence bound on the H200.)

Per ``family:dtype``, at the convergence test's sizes, first gradients (one forward + backward on the
test's first batch) of: float64 stock; stock eager; stock with SDPA and the rows reversed; SAMPLES
more stock runs with SDPA, reversed rows and every RMSNorm input moved by one rounding (coin seeds
7, 8, ...); and the model patched as the convergence test patches it. For each run, leave-one-out
against the stock runs (the patched run against all of them): per tensor, its error against float64
over the largest error of the others. Prints per run the median ratio, the share of tensors over 1
and over 2, and its worst tensors. A valid sample's line is what the patched run's should look like:

    PYTHONPATH=src python scripts/gpu/moe11_samples.py qwen3_5_moe:fp32 deepseek_v4:fp32
"""

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moe9_first_grads import DTYPES, first_grads  # noqa: E402 (conftest, tests/ on the path)
from test_convergence import float64_copy, with_rounding_moved, with_sdpa  # noqa: E402
from test_convergence_moe import build_moe  # noqa: E402

from liger_kernel.transformers import monkey_patch  # noqa: E402
from liger_kernel.transformers.model_specs import MODEL_SPECS  # noqa: E402
from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN  # noqa: E402

SAMPLES = 6


def patched_grads(model_type, dtype, initial):
    spec = MODEL_SPECS[model_type]
    MODEL_TYPE_TO_APPLY_LIGER_FN[model_type](rope=spec.rope is not None)
    try:
        model = build_moe(model_type, dtype)
        model.load_state_dict(initial)
        return first_grads(model)
    finally:
        getattr(monkey_patch, f"revert_liger_kernel_to_{model_type}")()


def report(model_type, dtype_name):
    dtype = DTYPES[dtype_name]
    stock = build_moe(model_type, dtype)
    initial = copy.deepcopy(stock.state_dict())
    g64 = first_grads(float64_copy(stock))
    runs = {"stock eager": first_grads(copy.deepcopy(stock))}
    sdpa = copy.deepcopy(stock)
    with_sdpa(sdpa)
    runs["sdpa reversed"] = first_grads(copy.deepcopy(sdpa), flip=True)
    for seed in range(7, 7 + SAMPLES):
        runs[f"norms moved {seed}"] = first_grads(with_rounding_moved(copy.deepcopy(sdpa), seed), flip=True)
    ours = patched_grads(model_type, dtype, initial)
    errors = {name: {k: (g[k] - g64[k]).abs().max().item() for k in g64} for name, g in runs.items()}
    ours_errors = {k: (ours[k] - g64[k]).abs().max().item() for k in g64}
    print(f"== {model_type} {dtype_name}: {len(g64)} tensors, {len(runs)} stock runs", flush=True)
    for name, errs in [*errors.items(), ("PATCHED", ours_errors)]:
        others = [e for n, e in errors.items() if n != name]
        ratios = {k: errs[k] / max(max(o[k] for o in others), 1e-300) for k in g64}
        values = sorted(ratios.values())
        median = values[len(values) // 2]
        over1 = sum(v > 1 for v in values) / len(values)
        over2 = sum(v > 2 for v in values) / len(values)
        worst = sorted(ratios, key=ratios.get, reverse=True)[:4]
        shown = ", ".join(f"{k} {ratios[k]:.2f}x" for k in worst)
        print(f"  {name:16s} median {median:.2f} over1 {over1:.2f} over2 {over2:.2f} | {shown}", flush=True)


if __name__ == "__main__":
    for case in sys.argv[1:] or ["qwen3_5_moe:fp32"]:
        report(*case.split(":"))
