#!/usr/bin/env bash
# Session 8, second GPU call (~9 min on one H200, carry .peer): issue 13's kernel benchmarks (fused
# add RMSNorm, M-RoPE, Llama 4 RoPE, tiled MLP: ours vs eager vs compile vs Liger 0.8.5), the
# vision-language end-to-end benchmark, and issue 12's sweep of every DPO/GRPO loss type. All result
# files come back in one archive ($OUT/results.tgz).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
R=benchmarks/results/h200
mkdir -p "$OUT" "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
bash benchmarks/setup_peers.sh >"$OUT/setup_peers.log" 2>&1 || echo "setup_peers failed"
for bench in fused_add_rms_norm qwen2vl_mrope llama4_rope tiled_mlp; do
  echo "== bench $bench $(date -u +%H:%M:%S)"
  timeout 50 python3 "benchmarks/bench_$bench.py" --out "$R/$bench" >>"$OUT/kernels13.log" 2>&1
  echo "exit $?"
done
tail -c 6000 "$OUT/kernels13.log"
echo "== vlm e2e $(date -u +%H:%M:%S)"
timeout 230 python3 benchmarks/e2e.py --cases qwen2.5-vl-3b-4x2048,gemma3-4b-2x2048 --warmup 2 --steps 4 \
  --timeout-s 75 --out "$R/vlm" >"$OUT/vlm_e2e.log" 2>&1
echo "exit $?"; tail -c 2500 "$OUT/vlm_e2e.log"
echo "== loss types $(date -u +%H:%M:%S)"
timeout 70 python3 benchmarks/bench_post_training.py --losses dpo,grpo --providers ours --sweep \
  --no-errors --out "$R/post_training" --name loss_types.json >"$OUT/loss_types.log" 2>&1
echo "exit $?"; tail -24 "$OUT/loss_types.log"
tar czf "$OUT/results.tgz" "$R"
echo "== done $(date -u +%H:%M:%S)"
