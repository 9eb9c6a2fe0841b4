#!/usr/bin/env bash
# Session 11, last call, TWO H200s, ~6 min:
#   GPU 0: issue 15's floor and compile table (scripts/gpu/s11-compile.sh, alone on its GPU);
#   GPU 1: the MoE and vision-language convergence tests with up to six moved-norm stock samples.
set -uo pipefail
source "$(dirname "$0")/lib.sh" d
run() { CUDA_VISIBLE_DEVICES=1 timeout 330 python3 -m pytest "${@:2}" -p no:cacheprovider -o addopts="" -q -rfE --durations=5 >"$L/t_$1.log" 2>&1; }
date -u +%H:%M:%S
CUDA_VISIBLE_DEVICES=0 bash scripts/gpu/s11-compile.sh >"$L/compile.log" 2>&1 &
run moe_fp32 tests/test_convergence_moe.py -k "not dtype1" &
run moe_bf16 tests/test_convergence_moe.py -k dtype1 &
run vlm_fp32 tests/test_convergence_vlm.py -k "not dtype1" &
run vlm_bf16 tests/test_convergence_vlm.py -k dtype1 &
wait
date -u +%H:%M:%S
for f in "$L"/t_*.log; do echo "-- $(basename "$f"): $(grep -E '(passed|failed|error)' "$f" | tail -1)"; grep -E "^(FAILED|ERROR)|^E  " "$f" | head -12 | cut -c1-300; done
tail -60 "$L/compile.log"
tar czf "$OUT/d.tgz" -C "$OUT" d && rm -rf "$L"
