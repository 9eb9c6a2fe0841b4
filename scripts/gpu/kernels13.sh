#!/usr/bin/env bash
# Issue 13's kernels on the GPU: their tests (M-RoPE, Llama 4 RoPE, fused add+RMSNorm, tiled MLP,
# and the RoPE / RMSNorm / LayerNorm suites whose kernels they extend), then their benchmarks
# (ours vs eager vs torch.compile vs Liger 0.8.5 in its own process).
# Run from the repo root (carry .peer): OUT=/some/dir bash scripts/gpu/kernels13.sh   (about 5 min on one H200)
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

for bench in fused_add_rms_norm qwen2vl_mrope llama4_rope tiled_mlp; do
  echo "== bench $bench $(date -u +%H:%M:%S)"
  timeout 45 python3 "benchmarks/bench_$bench.py" --out "$RESULTS/$bench" >"$LOG/bench_$bench.log" 2>&1
  echo "bench $bench exit $?"; tail -8 "$LOG/bench_$bench.log"
  cp "$RESULTS/$bench".md "$RESULTS/$bench".json "$LOG/" 2>/dev/null
done
echo "== done $(date -u +%H:%M:%S)"
