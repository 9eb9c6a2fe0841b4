#!/usr/bin/env bash
# Session 12, ONE H200: what is alive at the peak of a Gemma-3-4B-shape step (ours, Liger 0.8.5),
# issue 13's memory goal; ~2 min.
set -uo pipefail
source "$(dirname "$0")/lib.sh" b
for p in ours liger085; do
  lib=src; [ "$p" = liger085 ] && lib=.peer/liger085
  PYTHONPATH="$PWD/$lib" timeout 150 python3 scripts/gpu/mem12.py gemma3-4b-2x2048 $p >"$L/mem_gemma3_$p.log" 2>&1
  echo "$p exit $?"; head -45 "$L/mem_gemma3_$p.log"
done
date -u +%H:%M:%S
