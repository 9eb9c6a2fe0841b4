#!/usr/bin/env bash
# torch.compile on the GPU (issue 15): tests/test_compile.py under Inductor, then
# benchmarks/bench_compile.py (stock vs ours compiled vs ours eager, per-op choices).
# Run from the repo root: OUT=/some/dir bash scripts/gpu/compile.sh   (about 6-7 min on one H200)
# Logs: $OUT/compile/; results: benchmarks/results/h200/compile.{md,json} (also copied to $OUT/compile/).
# The benchmark runs its rows in order of importance (Llama headline, Llama per-op, Qwen2.5, Gemma 2);
# rows cut off by the time limit can be run later and are added to the same files:
#   python3 benchmarks/bench_compile.py --out benchmarks/results/h200 --warmup 2 --steps 4 \
#     --rows gemma2-2b-2x2048:hf-compile,gemma2-2b-2x2048:ours-compile,gemma2-2b-2x2048:ours-eager
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
# Two processes on the one GPU (tiny shapes; compiling is CPU-bound): the ops, the patched models.
pytest_args=(-q -p no:cacheprovider -o addopts="" -rfE --durations=8)
timeout 200 python3 -m pytest tests/test_compile.py -k "not patched and not family" "${pytest_args[@]}" \
  >"$LOG/tests_ops.log" 2>&1 &
timeout 200 python3 -m pytest tests/test_compile.py -k "patched or family" "${pytest_args[@]}" \
  >"$LOG/tests_models.log" 2>&1
models=$?
wait %1; ops=$?
echo "tests exit: ops $ops, models $models"; tail -8 "$LOG/tests_ops.log" "$LOG/tests_models.log"

echo "== bench $(date -u +%H:%M:%S)"
timeout 200 python3 benchmarks/bench_compile.py --out "$RESULTS" --timeout-s 90 --warmup 2 --steps 4 >"$LOG/bench.log" 2>&1
echo "bench exit $?"; tail -c 4000 "$LOG/bench.log"
cp "$RESULTS"/compile.md "$RESULTS"/compile.json "$LOG/" 2>/dev/null
echo "== done $(date -u +%H:%M:%S)"
