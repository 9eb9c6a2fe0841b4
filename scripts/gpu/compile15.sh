#!/usr/bin/env bash
# torch.compile of the divergence / GRPO losses and FLCE reduction="none" on the GPU (issue 15):
# tests/test_compile_losses.py (opcheck of every op on the kernels and the reference; no graph break;
# compiled vs eager values and gradients, Inductor for the static shapes).
# Run from the repo root: OUT=/some/dir bash scripts/gpu/compile15.sh   (at most ~3 min on one H200:
# two test processes, each bounded at 150 s). Logs: $OUT/compile15/tests_*.log; the summary is printed.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOG="$OUT/compile15"
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
echo "== tests $(date -u +%H:%M:%S)"
# Two processes on the one GPU (tiny shapes; compiling is CPU-bound): the compiled-vs-eager cases, the rest.
pytest_args=(tests/test_compile_losses.py -q -p no:cacheprovider -o addopts="" -rfEX --durations=8)
timeout 150 python3 -m pytest "${pytest_args[@]}" -k "under_compile" >"$LOG/tests_compile.log" 2>&1 &
compile_pid=$!
timeout 150 python3 -m pytest "${pytest_args[@]}" -k "not under_compile" >"$LOG/tests_ops.log" 2>&1
ops=$?
wait $compile_pid; compiled=$?
echo "tests exit (124: timed out): compiled vs eager $compiled, opcheck and the rest $ops"
grep -hE "^(FAILED|ERROR)|passed|failed" "$LOG"/tests_*.log | tail -n 30
echo "== done $(date -u +%H:%M:%S)"
