"""Where the one-pass DPO route waits for the GPU (tests/test_preference_syncs.py's step), in a fresh
process, five pairs first as the test did on the H200 (2, 2, 3 syncs at 1, 2, 5 one-pair chunks,
five measured first each time), then the other counts, then five again: a sync that the process
makes once shows up only in the first line. Prints one line per measurement."""

import sys

sys.path.insert(0, "tests")

from test_preference_syncs import host_syncs  # noqa: E402

import liger_kernel.chunked_loss.fused_linear_preference as engine  # noqa: E402

engine.ONE_PASS_BUDGET_BYTES = 2 * 33 * 257 * 4  # one pair per chunk
for n_pairs in (5, 2, 1, 5, 2):
    where = host_syncs(n_pairs)
    print(f"{n_pairs} pairs: {len(where)} syncs at {where}", flush=True)
