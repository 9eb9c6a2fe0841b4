#!/usr/bin/env bash
# Vision-language families (issue 13) on the GPU, under 7 minutes on one H200:
#  1. their convergence and instance-patch tests (tests/test_convergence_vlm.py: bf16 and fp32,
#     GPU sizes, RoPE kernel on), ~3 min;
#  2. the end-to-end training benchmark of a Qwen2.5-VL-3B-shaped model (12 layers, 4-block vision
#     tower, 448px image) and Gemma 3 4B (vocab 262144, 8 layers, 4-layer SigLIP, 896px image):
#     stock transformers vs ours vs Liger Kernel 0.8.5, tokens/s and peak memory, ~3.5 min.
# Logs: $OUT/vlm/; results: benchmarks/results/h200/vlm/e2e.{json,md,png}. Run from the repo root
# with .peer carried (benchmarks/setup_peers.sh unpacks the peer wheel from there).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOGS="$OUT/vlm"
RESULTS=benchmarks/results/h200/vlm
mkdir -p "$LOGS" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"

echo "== tests $(date -u +%H:%M:%S)"
timeout 200 python3 -m pytest tests/test_convergence_vlm.py tests/test_swiglu_geglu.py::test_fused_mlp_output_takes_in_place_ops \
  -p no:cacheprovider -o addopts="" -q -rfE --durations=8 >"$LOGS/gpu_tests.log" 2>&1
echo "tests rc=$?"
tail -15 "$LOGS/gpu_tests.log"

echo "== e2e $(date -u +%H:%M:%S)"
bash benchmarks/setup_peers.sh >"$LOGS/setup_peers.log" 2>&1 || echo "setup_peers failed (peer runs will error)"
timeout 230 python3 benchmarks/e2e.py --cases qwen2.5-vl-3b-4x2048,gemma3-4b-2x2048 --warmup 2 --steps 4 \
  --timeout-s 75 --out "$RESULTS" >"$LOGS/e2e.log" 2>&1
echo "e2e rc=$?"
tail -c 3000 "$LOGS/e2e.log"
cp "$RESULTS"/e2e.* "$LOGS"/ 2>/dev/null || true
echo "== done $(date -u +%H:%M:%S)"
