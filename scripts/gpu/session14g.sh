#!/usr/bin/env bash
# Session 14, ONE H200, ~3 min: the tiled gated MLP's ops on the GPU (opcheck, compiled = eager, a
# patched step with tiled_mlp=True compiled whole), the tiled MLP and the flag's tests.
set -uo pipefail
source "$(dirname "$0")/lib.sh" g
timeout 400 python3 -m pytest tests/test_compile_ops13.py tests/test_tiled_mlp.py tests/test_compile.py \
  tests/test_monkey_patch.py -k "tiled or compiles_whole" -p no:cacheprovider -o addopts="" -q -rfE >"$L/tests.log" 2>&1
echo "tests exit $?"; tail -4 "$L/tests.log"
date -u +%H:%M:%S
