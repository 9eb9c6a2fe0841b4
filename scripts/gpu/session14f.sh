#!/usr/bin/env bash
# Session 14, ONE H200 (carry .peer), ~6 min: the tiled MLP with blocks of at least 1024 columns at every
# case against Liger 0.8.5 and torch.compile (ours_blocks8: Gemma-3-4B's widths in 1280-column blocks), then
# the Gemma 3 e2e table once more (stock, ours, Liger 0.8.5, ours with tiled_mlp=True), same code.
set -uo pipefail
source "$(dirname "$0")/lib.sh" f
bash benchmarks/setup_peers.sh >/dev/null
timeout 300 python3 benchmarks/bench_tiled_mlp.py --graph --out "$L/tiled_mlp" \
  --providers ours,ours_blocks8,liger085,liger085_grads,compile_untiled,compile_tiled >"$L/tiled_mlp.log" 2>&1
echo "bench exit $?"; tail -9 "$L/tiled_mlp.log"
G=gemma3-4b-2x2048
timeout 330 python3 benchmarks/e2e.py --cases $G,$G-tiled --providers hf,ours,liger085 --timeout-s 75 \
  --skip "$G-tiled/hf,$G-tiled/liger085" --out "$L/e2e_gemma3" >"$L/e2e_gemma3.log" 2>&1
echo "e2e exit $?"; tail -8 "$L/e2e_gemma3.log"
date -u +%H:%M:%S
