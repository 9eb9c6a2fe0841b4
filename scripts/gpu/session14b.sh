#!/usr/bin/env bash
# Session 14, ONE H200, ~2 min: what is alive at the peak of the Gemma 3 step with tiled_mlp=True
# (13.8 GiB against 14.2 untiled: the peak moved elsewhere).
set -uo pipefail
source "$(dirname "$0")/lib.sh" b
timeout 150 python3 scripts/gpu/mem12.py gemma3-4b-2x2048-tiled ours >"$L/mem_gemma3_tiled.log" 2>&1
echo "mem exit $?"; grep -v "^Backend\|deprecated" "$L/mem_gemma3_tiled.log" | head -80
date -u +%H:%M:%S
