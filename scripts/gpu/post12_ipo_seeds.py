"""tests/test_chunked_preference.py's fp32 DPO ipo case (average_log_prob, beta=0.5) on every route over
many seeds: per checked value, the largest error / bound with the test's bound (the floor scaled by
the loss head's condition, ``run_paired``) and with the bound before (the floor scaled by the value's
own size), and how many seeds each bound fails. Usage: post12_ipo_seeds.py [seeds per route]."""

import collections
import sys

sys.path.insert(0, "tests")

import test_chunked_preference as t  # noqa: E402
import torch  # noqa: E402
from parity import FLOOR  # noqa: E402

from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss  # noqa: E402
from liger_kernel.chunked_loss import fused_linear_preference as pref_module  # noqa: E402
from liger_kernel.chunked_loss.fused_linear_preference import LigerFusedLinearPreferenceBase  # noqa: E402

SEEDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
OPTS = dict(loss_type="ipo", average_log_prob=True, beta=0.5)


def record(into):
    def assert_matches(name, actual, reference, baseline=None, factor=2.0, floor=None):
        ref, act = reference.detach().double(), actual.detach().double()
        scale = ref.abs().max().item()
        base_err = 0.0 if baseline is None else (baseline.detach().double() - ref).abs().max().item()
        err = (act - ref).abs().max().item()
        new = floor * max(scale, 1e-30) + factor * base_err
        old = FLOOR[actual.dtype] * max(scale, 1e-30) + factor * base_err
        into[name].append((err / new, err / old))

    return assert_matches


pref_module.whole_batch_fits = lambda x, weight: True
pref_module.ONE_PASS_BUDGET_BYTES = 1
for route in ("two passes", "one pass", "whole batch"):
    pref_module.WHOLE_BATCH_FOR_EVERY_LOSS = route == "whole batch"
    LigerFusedLinearPreferenceBase.one_pass = route != "two passes"
    ratios = collections.defaultdict(list)
    t.assert_matches = record(ratios)
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        t.run_paired("dpo", LigerFusedLinearDPOLoss(**OPTS), torch.float32, bias=True, opts=OPTS, use_ref=True)
    for name, r in ratios.items():
        if name in ("loss", "grad_input", "grad_weight", "grad_bias"):
            new, old = max(x[0] for x in r), max(x[1] for x in r)
            fails = sum(x[0] > 1 for x in r), sum(x[1] > 1 for x in r)
            print(f"{route:12s} {name:12s} worst err/bound {new:.3f} (bound before: {old:.3f}); "
                  f"fails {fails[0]}/{len(r)} (before: {fails[1]})", flush=True)  # fmt: skip
