#!/usr/bin/env bash
# Issue 15 on ONE H200: how far a compiled Llama-3.2-1B 8x2048 step is from its floor, and the
# compiled-vs-stock table for Llama, Gemma-2-2B and Qwen2.5-1.5B, all from one run.
#   1. bench_compile.py, Llama rows (hf-compile, ours-compile, ours-eager; a profiled step each)       <= 100 s
#   2. compile_floor.py: every part of the step timed alone, summed, beside those real steps; then
#      candidates (SDPA backends, stock ops under Inductor, merged matmuls)                             <= 120 s
#   3. bench_compile.py, Gemma-2-2B rows, then Qwen2.5-1.5B rows, then Llama stock and ours with
#      cuDNN attention first (-cudnn), while time is left                                              <= 125 s
# Run from the repo root: OUT=/some/dir bash scripts/gpu/s11-compile.sh
# Expected run time: about 5.5 min, at most 6 min (each step bounded by `timeout`; the bench's
# --budget-s skips rows it has no time left for and records them as skipped, so its files stay whole).
# Results: benchmarks/results/h200/compile.{md,json} (this run's rows only) and compile_floor.{md,json};
# logs in $OUT/s11-compile/, everything in ONE archive $OUT/s11-compile.tgz. The summary is printed.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOG="$OUT/s11-compile"
RESULTS=${RESULTS:-benchmarks/results/h200}
mkdir -p "$LOG" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv,noheader | tee "$LOG/gpu.txt"
rm -f "$RESULTS/compile.json" "$RESULTS/compile.md"  # one run's rows only (the earlier ones are in git)
bench=(python3 benchmarks/bench_compile.py --out "$RESULTS" --warmup 2 --steps 4)
L=llama-1b-8x2048 G=gemma2-2b-2x2048 Q=qwen2.5-1.5b-4x2048

echo "== Llama rows $(date -u +%H:%M:%S)"
timeout 100 "${bench[@]}" --profile --timeout-s 70 --budget-s 95 \
  --rows "$L:hf-compile,$L:ours-compile,$L:ours-eager" >"$LOG/bench_llama.log" 2>&1
echo "exit $?"; grep -E "^  [a-z]" "$LOG/bench_llama.log"

echo "== floor $(date -u +%H:%M:%S)"
timeout 120 python3 benchmarks/compile_floor.py --real "$RESULTS/compile.json" --out "$RESULTS" >"$LOG/floor.log" 2>&1
status=$?
echo "exit $status"; [ $status -eq 0 ] || tail -n 8 "$LOG/floor.log"
# The tables (written before the candidates, then again with them) without the per-layer matmul rows
# and the top-kernel lists.
sed -n '/^\*\*Parts/,/^Top kernels/p' "$RESULTS/compile_floor.md" | grep -vE "^\| (q|k|v|o|gate|up|down)_proj|^Top kernels"

echo "== Gemma-2, Qwen2.5, Llama -cudnn rows $(date -u +%H:%M:%S)"
timeout 125 "${bench[@]}" --timeout-s 90 --budget-s 120 \
  --rows "$G:hf-compile,$G:ours-compile,$G:ours-eager,$Q:hf-compile,$Q:ours-compile,$Q:ours-eager,$L:hf-compile-cudnn,$L:ours-compile-cudnn" \
  >"$LOG/bench_rest.log" 2>&1
echo "exit $?"; grep -E "^  [a-z]" "$LOG/bench_rest.log"
grep -hE "Error|error:" "$LOG"/bench_*.log | sort | uniq -c | head -n 8

cp "$RESULTS"/compile.md "$RESULTS"/compile.json "$RESULTS"/compile_floor.md "$RESULTS"/compile_floor.json "$LOG/" 2>/dev/null
echo; cat "$RESULTS/compile.md" 2>/dev/null
tar -czf "$OUT/s11-compile.tgz" -C "$OUT" s11-compile && rm -rf "$LOG"
echo "== done $(date -u +%H:%M:%S)"
