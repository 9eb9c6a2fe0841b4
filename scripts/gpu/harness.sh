#!/usr/bin/env bash
# GPU run for helper harness (session 10, issue 13): tests/test_convergence_vlm.py in fp32 and bf16 on
# one H200, now with the second stock run (batch rows reversed) as the VL tests' yardstick too and
# the bound for biases zero in exact arithmetic (a vision tower's key projection bias). Four pytest
# processes side by side: fp32 and bf16, each split into two halves of the families (the tests
# without a dtype, instance patch / revert, Pixtral, the reversed batch, run with fp32).
# Logs under $OUT/harness/ (one per process, summary.log). Expected: ~3 minutes, at most 5.
# Usage, from the repo root: bash scripts/gpu/harness.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOGS="$OUT/harness"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
FIRST="gemma3 or gemma4 or glm4v or internvl or llama4 or llava"  # glm4v_moe and llama4_text included
run() {  # name pytest-k-expression
  timeout 240 python3 -m pytest tests/test_convergence_vlm.py -k "$2" -p no:cacheprovider -o addopts="" -q -rfE \
    --durations=5 >"$LOGS/$1.log" 2>&1
  echo "exit $?" >>"$LOGS/$1.log"
}
{
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
  echo "== start $(date -u +%H:%M:%S)"
  run fp32_a "not dtype1 and ($FIRST)" &
  run fp32_b "not dtype1 and not ($FIRST)" &
  run bf16_a "dtype1 and ($FIRST)" &
  run bf16_b "dtype1 and not ($FIRST)" &
  wait
  echo "== end $(date -u +%H:%M:%S)"
  for name in fp32_a fp32_b bf16_a bf16_b; do
    echo "-- $name: $(grep -E '(passed|failed|error)' "$LOGS/$name.log" | tail -1) ($(tail -1 "$LOGS/$name.log"))"
    grep -E "^(FAILED|ERROR)|^E +(AssertionError|torch\.|RuntimeError)" "$LOGS/$name.log" | cut -c1-400 | head -20
  done
} 2>&1 | tee "$LOGS/summary.log"
