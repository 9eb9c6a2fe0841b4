#!/usr/bin/env bash
# Session 12, ONE H200 (carry .peer), ~7 min: the FLCE tile route's forward chunk floor (256 tokens;
# the kept share alone gave 128 at H <= 2560) at three heads: Llama-3.2-1B at N=2048, Gemma-2-2B and
# Gemma-3-4B at N=4096 (e2e's token counts); then the tiled MLP's bars (scripts/gpu/tiled12.sh).
set -uo pipefail
source "$(dirname "$0")/lib.sh" c
flce llama1b 2048 2048 128256 "exact (default),exact (default) chunk floor 0,exact accumulate" 80
flce gemma2 4096 2304 256000 "exact (default),exact (default) chunk floor 0,exact tiles,exact tiles chunk floor 512" 80
flce gemma3 4096 2560 262144 "exact (default),exact (default) chunk floor 0,exact accumulate,exact tiles chunk floor 512" 80
date -u +%H:%M:%S
tar czf "$OUT/c.tgz" -C "$OUT" c && rm -rf "$L"
bash scripts/gpu/tiled12.sh
