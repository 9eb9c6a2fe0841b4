#!/usr/bin/env bash
# Session 14, ONE H200 (carry .peer), ~5 min: the tiled MLP at an e2e step's shorter sequences (Gemma-3-4B
# widths at 4096 tokens, Llama-3.2-1B's at 16384) and at Llama-3-8B's 16K, by the number of intermediate
# blocks of its backward: is the default (ceil(4 I / H) blocks) what makes tiled_mlp=True cost 15% of
# Gemma 3's step?
set -uo pipefail
source "$(dirname "$0")/lib.sh" d
bash benchmarks/setup_peers.sh >/dev/null
tiled_mlp tiled_blocks ours,ours_blocks2,ours_blocks4,ours_blocks8,ours_untiled,liger085 \
  gemma3-4b_t4096,llama3.2-1b_t16384,llama3-8b_t16384 420
date -u +%H:%M:%S
