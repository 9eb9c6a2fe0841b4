#!/usr/bin/env bash
# The tiled SwiGLU MLP (Llama-3-8B widths, 16K and 64K tokens, bf16, fwd+bwd) against Liger 0.8.5 and
# torch.compile of the plain-PyTorch MLP both untiled (compile_untiled: the whole intermediate kept) and
# tiled (compile_tiled: ours' token shards, each checkpointed: the like-for-like compile), --graph for the
# GPU time alone; then each gradient's error against float64 over one rounding's, for ours,
# compile_tiled, the untiled bf16 MLP (eager) and Liger 0.8.5 (benchmarks/tiled_mlp_accuracy.py).
# Run from the repo root (carry .peer): OUT=/some/dir bash scripts/gpu/tiled12.sh   (about 4 min on one H200)
# Results: benchmarks/results/h200/tiled_mlp.{md,json}, tiled_mlp_accuracy.{md,json}, copied with the
# logs into $OUT/tiled12/, packed as $OUT/tiled12.tgz.
set -uo pipefail
source "$(dirname "$0")/lib.sh" tiled12
RESULTS=${RESULTS:-benchmarks/results/h200}
mkdir -p "$RESULTS"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed: liger085 will say so"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader | tee "$L/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$L/gpu.txt"

run() {  # name, time limit (s), script and arguments
  local name=$1 limit=$2
  shift 2
  echo "== $name $(date -u +%H:%M:%S)"
  timeout "$limit" python3 "$@" --out "$RESULTS/$name" >"$L/$name.log" 2>&1
  echo "$name exit $?"
  tail -12 "$L/$name.log"
  cp "$RESULTS/$name".md "$RESULTS/$name".json "$L/" 2>/dev/null
}
run tiled_mlp 150 benchmarks/bench_tiled_mlp.py --graph --providers ours,liger085,compile_untiled,compile_tiled
run tiled_mlp_accuracy 100 benchmarks/tiled_mlp_accuracy.py --providers ours,compile_tiled,eager,liger085
echo "== done $(date -u +%H:%M:%S)"
tar czf "$OUT/tiled12.tgz" -C "$OUT" tiled12 && rm -rf "$OUT/tiled12"
