#!/usr/bin/env bash
# Session 13, ONE H200, ~4 min: the cross-entropy ops with token accuracy and predicted tokens as outputs
# (no Function fallback under compile): opcheck of every op and compile-vs-eager of the losses, on the GPU.
set -uo pipefail
source "$(dirname "$0")/lib.sh" d
timeout 420 python3 -m pytest -q -rfE -p no:cacheprovider tests/test_compile_losses.py tests/test_compile.py \
  -k "opcheck or under_compile or token_accuracy" >"$L/compile_ops.log" 2>&1
echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$L/compile_ops.log" | tail -30
date -u +%H:%M:%S
tar czf "$OUT/d.tgz" -C "$OUT" d && rm -rf "$L"
