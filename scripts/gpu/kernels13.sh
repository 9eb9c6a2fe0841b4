#!/usr/bin/env bash
# Issue 13's kernels on the GPU: their tests (M-RoPE, Llama 4 RoPE, fused add+RMSNorm, tiled MLP,
# and the RoPE / RMSNorm / LayerNorm suites whose kernels they extend), then their benchmarks
# (ours vs eager vs torch.compile vs Liger 0.8.5 in its own process), each also timed on the GPU alone
# (--graph: a CUDA graph replay, "(GPU x)" in the tables: at these sizes the host's ~0.2 ms per fwd+bwd
# is close to the kernels' time).
# Run from the repo root (carry .peer): OUT=/some/dir bash scripts/gpu/kernels13.sh   (about 6 min on one H200)
# Logs: $OUT/kernels13/; results: benchmarks/results/h200/{fused_add_rms_norm,qwen2vl_mrope,llama4_rope,tiled_mlp}.{md,json}
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOG="$OUT/kernels13"
RESULTS=${RESULTS:-benchmarks/results/h200}
mkdir -p "$LOG" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
bash benchmarks/setup_peers.sh >"$LOG/setup_peers.log" 2>&1 || echo "setup_peers failed: liger085 columns will say so"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader | tee "$LOG/gpu.txt"

echo "== tests $(date -u +%H:%M:%S)"
timeout 100 python3 -m pytest tests/test_qwen2vl_mrope.py tests/test_llama4_rope.py tests/test_fused_add_rms_norm.py \
  tests/test_tiled_mlp.py tests/test_rope.py tests/test_rms_norm.py tests/test_layer_norm.py tests/test_api_names.py \
  -q -p no:cacheprovider -o addopts="" -rfE --durations=10 >"$LOG/tests.log" 2>&1
echo "tests exit $?"; tail -15 "$LOG/tests.log"

run_bench() {  # name, time limit (s), extra arguments
  echo "== bench $1 $(date -u +%H:%M:%S)"
  timeout "$2" python3 "benchmarks/bench_$1.py" --graph --out "$RESULTS/$1" "${@:3}" >"$LOG/bench_$1.log" 2>&1
  echo "bench $1 exit $?"; tail -8 "$LOG/bench_$1.log"
  cp "$RESULTS/$1".md "$RESULTS/$1".json "$LOG/" 2>/dev/null
}
run_bench fused_add_rms_norm 50  # candidates ours_tile32 (the spilling tile), ours_tile8
run_bench qwen2vl_mrope 50       # candidates ours_tile2048, ours_tile2048_w8, ours_tile4096_w8, ours_merged
run_bench llama4_rope 45
run_bench tiled_mlp 90 --providers ours,ours_generic,ours_untiled,liger085,compile  # eager: as compile, 8 s more
echo "== done $(date -u +%H:%M:%S)"
