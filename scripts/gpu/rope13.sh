#!/usr/bin/env bash
# M-RoPE and Llama 4 RoPE rotating q and k in place (issue 13): their tests (the in-place contract
# included), the compile tests of their twins, then both benchmarks with --graph (ours vs eager vs
# torch.compile vs Liger 0.8.5 in its own process; "(GPU x)": the CUDA-graph time alone).
# Run from the repo root (carry .peer): OUT=/some/dir bash scripts/gpu/rope13.sh   (about 2 min on one H200:
# tests <= 75 s, compile tests <= 40 s, benches <= 45 s + 40 s)
# Logs: $OUT/rope13/; results: benchmarks/results/h200/{qwen2vl_mrope,llama4_rope}.{md,json}
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOG="$OUT/rope13"
RESULTS=${RESULTS:-benchmarks/results/h200}
mkdir -p "$LOG" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
bash benchmarks/setup_peers.sh >"$LOG/setup_peers.log" 2>&1 || echo "setup_peers failed: liger085 columns will say so"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader | tee "$LOG/gpu.txt"

echo "== tests $(date -u +%H:%M:%S)"
timeout 75 python3 -m pytest tests/test_qwen2vl_mrope.py tests/test_llama4_rope.py \
  -q -p no:cacheprovider -o addopts="" -rfE --durations=5 >"$LOG/tests.log" 2>&1
echo "tests exit $?"; tail -12 "$LOG/tests.log"
timeout 40 python3 -m pytest tests/test_compile_ops13.py -k "rope" \
  -q -p no:cacheprovider -o addopts="" -rfE >"$LOG/tests_compile.log" 2>&1
echo "compile tests exit $?"; tail -6 "$LOG/tests_compile.log"

run_bench() {  # name, time limit (s), extra arguments
  echo "== bench $1 $(date -u +%H:%M:%S)"
  timeout "$2" python3 "benchmarks/bench_$1.py" --graph --out "$RESULTS/$1" "${@:3}" >"$LOG/bench_$1.log" 2>&1
  echo "bench $1 exit $?"; tail -8 "$LOG/bench_$1.log"
  cp "$RESULTS/$1".md "$RESULTS/$1".json "$LOG/" 2>/dev/null
}
run_bench qwen2vl_mrope 45 --providers ours,ours_merged,liger085,compile,eager
run_bench llama4_rope 40
echo "== done $(date -u +%H:%M:%S)"
