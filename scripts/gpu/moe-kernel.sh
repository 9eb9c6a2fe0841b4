#!/usr/bin/env bash
# Fused MoE experts (issue 14, part 1) on the GPU: the experts-block benchmark (ours vs transformers'
# eager and grouped_mm experts vs Liger 0.8.5) at the Qwen3-30B-A3B and GPT-OSS-20B layer shapes, then
# tests/test_fused_moe.py on the same GPU. Results: benchmarks/results/h200/moe/ (moe.md, moe.json,
# moe.png where matplotlib is installed); logs: "$OUT/moe-kernel/" (bench.log has our per-kernel
# profile and the autotuner's picks). About 4 minutes. With two GPUs Liger 0.8.5,
# whose first call autotunes for minutes, runs on the second one from the start and gets the whole
# 4 minutes (a shape it has not finished by then is left out); with one GPU it is left out.
set -uo pipefail
cd "$(dirname "$0")/../.."
LOG="${OUT:-/tmp}/moe-kernel"
mkdir -p "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
PEER_JSON=""
if [ "$GPUS" -gt 1 ] && bash benchmarks/setup_peers.sh > "$LOG/setup_peers.log" 2>&1; then
  CUDA_VISIBLE_DEVICES=1 timeout 235 python benchmarks/bench_moe.py --impls liger085 --timeout 225 \
    --out "$LOG/peer" --keep-heads > "$LOG/peer.log" 2>&1 &
  PEER_JSON="$LOG/peer/moe.json"
fi
CUDA_VISIBLE_DEVICES=0 TRITON_PRINT_AUTOTUNING=1 timeout 125 python benchmarks/bench_moe.py --impls ours,hf_grouped_mm,hf_eager \
  --timeout 120 --budget 120 --profile --out "$LOG/main" --keep-heads > "$LOG/bench.log" 2>&1
CUDA_VISIBLE_DEVICES=0 timeout 110 python -m pytest tests/test_fused_moe.py -q -p no:cacheprovider 2>&1 \
  | tail -30 | tee "$LOG/tests.log"
wait
python benchmarks/bench_moe.py --impls "" --merge "$LOG/main/moe.json${PEER_JSON:+,$PEER_JSON}" \
  --out benchmarks/results/h200/moe | tee "$LOG/moe.md"
grep -v "^|" "$LOG/peer.log" 2>/dev/null | tail -3
