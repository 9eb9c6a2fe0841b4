#!/usr/bin/env bash
# Session 14, ONE H200 (carry .peer), ~3 min: tiled_mlp=True at a long sequence, Llama-3.2-1B 4x8192: ours,
# ours with tiled MLPs, Liger 0.8.5, one run.
set -uo pipefail
source "$(dirname "$0")/lib.sh" i
bash benchmarks/setup_peers.sh >/dev/null
C=llama-1b-4x8192
timeout 230 python3 benchmarks/e2e.py --cases $C,$C-tiled --providers ours,liger085 --warmup 2 --steps 4 \
  --timeout-s 75 --skip "$C-tiled/liger085" --out "$L/e2e_llama_tiled" >"$L/e2e_llama_tiled.log" 2>&1
echo "e2e exit $?"; tail -7 "$L/e2e_llama_tiled.log"
date -u +%H:%M:%S
