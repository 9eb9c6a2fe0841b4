#!/usr/bin/env bash
# Session 14, ONE H200 (carry .peer), ~6 min: the tiled MLP with blocks of at least 1280 columns, at every
# case (Llama-3-8B 16K and 64K, Gemma-3-4B's and Llama-3.2-1B's e2e lengths) against Liger 0.8.5 (its
# weight gradients counted or not) and torch.compile (untiled, and tiled with checkpointed shards).
set -uo pipefail
source "$(dirname "$0")/lib.sh" e
bash benchmarks/setup_peers.sh >/dev/null
tiled_mlp tiled_mlp ours,liger085,liger085_grads,compile_untiled,compile_tiled,ours_untiled "" 520
date -u +%H:%M:%S
