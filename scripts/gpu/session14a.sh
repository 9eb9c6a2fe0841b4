#!/usr/bin/env bash
# Session 14, ONE H200 (carry .peer), ~6 min: the tiled_mlp flag's GPU tests, then Gemma 3 e2e in one
# run: stock, ours, Liger 0.8.5 (defaults), and ours with tiled_mlp=True (issue 13's memory goal).
set -uo pipefail
source "$(dirname "$0")/lib.sh" a
bash benchmarks/setup_peers.sh >/dev/null
timeout 150 python3 -m pytest tests/test_monkey_patch.py tests/test_convergence_vlm.py -k "tiled" \
  -p no:cacheprovider -o addopts="" -q -x -rfE >"$L/tests.log" 2>&1
echo "tests exit $?"; tail -3 "$L/tests.log"
gemma3_e2e
date -u +%H:%M:%S
