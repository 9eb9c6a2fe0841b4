"""Which norm modules, and which property of the patched norm, move a MoE family's first-step
gradients off float64 on the GPU (issue 14; session 9 found the ``rms_norm`` flag alone at fault).

Per ``family:dtype``: the norms flag as patched; the same with the backward never reusing the
output gradient's buffer (``in_place=False``); the same on the PyTorch reference
(``set_impl("torch")``); then the norms patched at one role only (module-name suffix); last, the
stock model with every norm's input moved by one rounding (tests/test_convergence.py's third sample):

    PYTHONPATH=src python scripts/gpu/moe10_norm_probe.py qwen3_5_moe:fp32 gpt_oss:fp32
"""

import copy
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moe9_first_grads import DTYPES, OFF, first_grads  # noqa: E402 (conftest, tests/ on the path)
from test_convergence import float64_copy, with_rounding_moved, with_sdpa  # noqa: E402
from test_convergence_moe import build_moe  # noqa: E402

from liger_kernel.ops.backends.registry import set_impl  # noqa: E402
from liger_kernel.transformers import model_specs, monkey_patch  # noqa: E402
from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance  # noqa: E402

NORMS = OFF | {"rms_norm": True}


def patched_grads(stock, model_type, keep=None, in_place=None, impl=None):
    spec = model_specs.MODEL_SPECS[model_type]
    if in_place is not None:
        model_specs.MODEL_SPECS[model_type] = dataclasses.replace(
            spec, norm=dataclasses.replace(spec.norm, in_place=in_place)
        )
        monkey_patch._ADAPTERS.clear()
    model = copy.deepcopy(stock)
    try:
        _apply_liger_kernel_to_instance(model, **NORMS)
        if keep is not None:
            for name, module in model.named_modules():
                if hasattr(type(module), "stock_class") and name.rsplit(".", 1)[-1] != keep:
                    module.__class__ = type(module).stock_class
        if impl:
            set_impl(impl)
        return first_grads(model)
    finally:
        set_impl("auto")
        model_specs.MODEL_SPECS[model_type] = spec
        monkey_patch._ADAPTERS.clear()


def report(model_type, dtype_name):
    stock = build_moe(model_type, DTYPES[dtype_name])
    g64 = first_grads(float64_copy(stock))
    sdpa = copy.deepcopy(stock)
    with_sdpa(sdpa)
    stock_runs = [first_grads(copy.deepcopy(stock)), first_grads(sdpa, flip=True)]
    base = {k: max((s[k] - g64[k]).abs().max().item() for s in stock_runs) for k in g64}
    roles = sorted({n.rsplit(".", 1)[-1] for n, m in stock.named_modules() if type(m).__name__.endswith("RMSNorm")})
    print(f"== {model_type} {dtype_name}: norm roles {roles}", flush=True)
    cases = {"norms": {}, "norms in_place=False": {"in_place": False}, "norms torch": {"impl": "torch"}}
    cases |= {f"only {r}": {"keep": r} for r in roles}
    cases["stock, norm inputs moved"] = None
    for label, kw in cases.items():
        if kw is None:
            grads = first_grads(with_rounding_moved(copy.deepcopy(stock)))
        else:
            grads = patched_grads(stock, model_type, **kw)
        ratios = {k: (grads[k] - g64[k]).abs().max().item() / max(base[k], 1e-300) for k in g64}
        worst = sorted(ratios, key=ratios.get, reverse=True)[:5]
        shown = ", ".join(f"{k} {ratios[k]:.2f}x" for k in ["model.embed_tokens.weight", *worst])
        shown += f"; loss error {(grads['loss'] - g64['loss']).abs().item():.1e} (stock {base['loss']:.1e})"
        print(f"  {label:24s} {shown}", flush=True)


if __name__ == "__main__":
    for case in sys.argv[1:] or ["qwen3_5_moe:fp32"]:
        report(*case.split(":"))
