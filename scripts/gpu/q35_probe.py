"""Session 15: which patched op moves qwen3_5_moe's fp32 training past the convergence bound on the
H200 (tests/test_convergence_moe.py, deterministic; the references pass). Each variant leaves one op
stock; prints the harness's failures or "pass"."""

import copy
import sys

sys.path.insert(0, "tests")
import torch  # noqa: E402
from test_convergence import assert_converges, float64_copy  # noqa: E402
from test_convergence_moe import build_moe  # noqa: E402

from liger_kernel.transformers import monkey_patch  # noqa: E402

T = "qwen3_5_moe"
VARIANTS = {
    "all": {},
    "no-rms_norm": {"rms_norm": False},
    "no-swiglu": {"swiglu": False},
    "no-flce": {"fused_linear_cross_entropy": False},
    "norm-only": {"swiglu": False, "fused_linear_cross_entropy": False},
}
for name in sys.argv[1:] or VARIANTS:
    flags = VARIANTS[name]
    stock = build_moe(T, torch.float32)
    model64, initial = float64_copy(stock), copy.deepcopy(stock.state_dict())

    def make(flags=flags, initial=initial):
        monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN[T](**flags)
        patched = build_moe(T, torch.float32)
        patched.load_state_dict(initial)
        return patched

    try:
        assert_converges(f"{T} {name}", model64, stock, make)
        print(f"{name}: pass", flush=True)
    except AssertionError as e:
        print(f"{name}: {str(e).splitlines()[0]}", flush=True)
    getattr(monkey_patch, f"revert_liger_kernel_to_{T}")()  # stock again for the next variant
