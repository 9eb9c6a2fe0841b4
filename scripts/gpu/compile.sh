#!/usr/bin/env bash
# torch.compile on the GPU (issue 15): tests/test_compile.py under Inductor, then
# benchmarks/bench_compile.py (stock vs ours compiled vs ours eager, per-op choices).
# Run from the repo root: OUT=/some/dir bash scripts/gpu/compile.sh   (about 6-7 min on one H200)
# Logs: $OUT/compile/; results: benchmarks/results/h200/compile.{md,json} (also copied to $OUT/compile/).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOG="$OUT/compile"
RESULTS=${RESULTS:-benchmarks/results/h200}
mkdir -p "$LOG" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader | tee "$LOG/gpu.txt"

echo "== tests $(date -u +%H:%M:%S)"
timeout 180 python3 -m pytest tests/test_compile.py -q -p no:cacheprovider -o addopts="" -rfE --durations=10 \
  >"$LOG/tests.log" 2>&1
echo "tests exit $?"; tail -15 "$LOG/tests.log"

echo "== bench $(date -u +%H:%M:%S)"
timeout 220 python3 benchmarks/bench_compile.py --out "$RESULTS" --timeout-s 90 --warmup 2 --steps 4 >"$LOG/bench.log" 2>&1
echo "bench exit $?"; tail -c 4000 "$LOG/bench.log"
cp "$RESULTS"/compile.md "$RESULTS"/compile.json "$LOG/" 2>/dev/null
echo "== done $(date -u +%H:%M:%S)"
