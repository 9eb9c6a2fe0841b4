#!/usr/bin/env bash
# Session 14, ONE H200 (carry .peer), ~6 min: the tiled MLP with blocks of at least 1024 columns at every
# case against Liger 0.8.5 and torch.compile (ours_blocks8: Gemma-3-4B's widths in 1280-column blocks), then
# the Gemma 3 e2e table once more (stock, ours, Liger 0.8.5, ours with tiled_mlp=True), same code.
set -uo pipefail
source "$(dirname "$0")/lib.sh" f
bash benchmarks/setup_peers.sh >/dev/null
tiled_mlp tiled_mlp ours,ours_blocks8,liger085,liger085_grads,compile_untiled,compile_tiled
gemma3_e2e
date -u +%H:%M:%S
