#!/usr/bin/env bash
# The tiled gated MLP's two backward routes (blocks of the intermediate at 16K tokens, token shards
# at 64K) on the GPU: tests/test_tiled_mlp.py (the Llama-3-8B 16K case included), then the benchmark
# against Liger 0.8.5 and torch.compile (--graph: also the GPU time alone), then the routes forced
# (ours_blocks, ours_tokens, ours_tokens_2048: token shards of 2048 tokens) beside Liger with its
# weight gradients counted (liger085_grads).
# Run from the repo root (carry .peer): OUT=/some/dir bash scripts/gpu/tiled13.sh   (about 4 min on one H200)
# Logs: $OUT/tiled13/; results: benchmarks/results/h200/tiled_mlp.{md,json}, tiled_mlp_routes.{md,json}
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOG="$OUT/tiled13"
RESULTS=${RESULTS:-benchmarks/results/h200}
mkdir -p "$LOG" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
bash benchmarks/setup_peers.sh >"$LOG/setup_peers.log" 2>&1 || echo "setup_peers failed: liger085 columns will say so"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader | tee "$LOG/gpu.txt"
python3 - <<'PY' 2>&1 | tee -a "$LOG/gpu.txt"
import torch  # the fp32-output matmul both backward routes sum in: bf16 operands added into an fp32 tensor
print("torch", torch.__version__)
a, b = (torch.randn(64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
total = torch.mm(a, b, out_dtype=torch.float32)
torch.addmm(total, a, b, out_dtype=torch.float32, out=total)
print("addmm out_dtype fp32 in place: max error", (total - 2 * (a.float() @ b.float())).abs().max().item())
PY

echo "== tests $(date -u +%H:%M:%S)"
timeout 150 python3 -m pytest tests/test_tiled_mlp.py -q -p no:cacheprovider -o addopts="" -rfE --durations=8 \
  >"$LOG/tests.log" 2>&1
echo "tests exit $?"; tail -15 "$LOG/tests.log"

run_bench() {  # results name, time limit (s), providers
  echo "== bench $1 $(date -u +%H:%M:%S)"
  timeout "$2" python3 benchmarks/bench_tiled_mlp.py --graph --providers "$3" --out "$RESULTS/$1" >"$LOG/bench_$1.log" 2>&1
  echo "bench $1 exit $?"; tail -8 "$LOG/bench_$1.log"
  cp "$RESULTS/$1".md "$RESULTS/$1".json "$LOG/" 2>/dev/null
}
run_bench tiled_mlp 100 ours,liger085,compile
run_bench tiled_mlp_routes 120 ours_blocks,ours_tokens,ours_tokens_2048,liger085_grads
echo "== done $(date -u +%H:%M:%S)"
