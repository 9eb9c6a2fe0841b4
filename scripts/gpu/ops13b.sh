#!/usr/bin/env bash
# Issue 13's kernels against Liger 0.8.5 and torch.compile at their models' shapes, after the session-9
# launch changes: fused add RMSNorm (backward tile with the residual gradient; candidates ours_tile32 =
# the old tile, ours_tile8), Qwen2-VL M-RoPE (tile candidates ours_tile2048, ours_tile2048_w8,
# ours_tile4096_w8) and the tiled SwiGLU MLP. Each bench also reports the GPU time alone (--graph: a
# CUDA graph replay, "(GPU x)" in the tables), since at these sizes the lent H200's host cost of a
# fwd+bwd (~0.2 ms) is close to or above the kernels' time. The eager tests of the three ops first.
# Run from the repo root (carry .peer): OUT=/some/dir bash scripts/gpu/ops13b.sh   (about 3.5 min on one H200;
# every step is bounded: 75 + 50 + 50 + 90 s at most, plus ~15 s of setup)
# Logs: $OUT/ops13/; results: benchmarks/results/h200/{fused_add_rms_norm,qwen2vl_mrope,tiled_mlp}.{md,json}
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOG="$OUT/ops13"
RESULTS=${RESULTS:-benchmarks/results/h200}
mkdir -p "$LOG" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
bash benchmarks/setup_peers.sh >"$LOG/setup_peers.log" 2>&1 || echo "setup_peers failed: liger085 columns will say so"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader | tee "$LOG/gpu.txt"

echo "== tests $(date -u +%H:%M:%S)"
timeout 75 python3 -m pytest tests/test_fused_add_rms_norm.py tests/test_qwen2vl_mrope.py tests/test_tiled_mlp.py \
  -q -p no:cacheprovider -o addopts="" -rfE --durations=8 >"$LOG/tests.log" 2>&1
echo "tests exit $?"; tail -12 "$LOG/tests.log"

run_bench() {  # name, time limit (s), extra arguments
  echo "== bench $1 $(date -u +%H:%M:%S)"
  timeout "$2" python3 "benchmarks/bench_$1.py" --graph --out "$RESULTS/$1" "${@:3}" >"$LOG/bench_$1.log" 2>&1
  echo "bench $1 exit $?"; tail -8 "$LOG/bench_$1.log"
  cp "$RESULTS/$1".md "$RESULTS/$1".json "$LOG/" 2>/dev/null
}
run_bench fused_add_rms_norm 50
run_bench qwen2vl_mrope 50
run_bench tiled_mlp 90 --providers ours,ours_generic,ours_untiled,liger085,compile  # eager: as compile, 8 s more
echo "== done $(date -u +%H:%M:%S)"
