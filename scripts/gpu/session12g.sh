#!/usr/bin/env bash
# Session 12, ONE H200, ~2 min: the tiled MLP's token route after its dx fix (one fp32 sum per shard):
# its tests on the GPU and ours' gradient accuracy at 16K and 64K tokens.
set -uo pipefail
source "$(dirname "$0")/lib.sh" g
timeout 100 python3 -m pytest tests/test_tiled_mlp.py -p no:cacheprovider -o addopts="" -q -x -rfE >"$L/tests.log" 2>&1
echo "tests exit $?"; tail -3 "$L/tests.log"
timeout 90 python3 benchmarks/tiled_mlp_accuracy.py --providers ours --out "$L/accuracy" >"$L/accuracy.log" 2>&1
echo "accuracy exit $?"; cat "$L/accuracy.md" 2>/dev/null || tail -5 "$L/accuracy.log"
date -u +%H:%M:%S
tar czf "$OUT/g.tgz" -C "$OUT" g && rm -rf "$L"
