#!/usr/bin/env bash
# Model convergence and fused-experts tests on one GPU (transformers 5.17 there): the four files as
# seven parallel pytest processes (each bounded at 220 s; ~3-4 min in all, the session-8 run of the
# same files took 150-193 s per file with five processes sharing the GPU). Logs: $OUT/conv/.
# Run from the repo root: bash scripts/gpu/conv.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOGS="$OUT/conv"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"

groups=(
  "convergence_fp32|tests/test_convergence.py|not dtype1"
  "convergence_bf16|tests/test_convergence.py|dtype1"
  "moe_fp32|tests/test_convergence_moe.py|not dtype1"
  "moe_bf16|tests/test_convergence_moe.py|dtype1"
  "vlm|tests/test_convergence_vlm.py|"
  "fused_moe_reference|tests/test_fused_moe.py|test_fused_moe_matches_reference"
  "fused_moe_rest|tests/test_fused_moe.py|not test_fused_moe_matches_reference"
)
echo "== start $(date -u +%H:%M:%S)"
for group in "${groups[@]}"; do
  IFS='|' read -r name file select <<<"$group"
  timeout 220 python3 -m pytest "$file" ${select:+-k "$select"} -p no:cacheprovider -o addopts="" -q -rfE \
    --durations=5 >"$LOGS/$name.log" 2>&1 &
done
wait
for group in "${groups[@]}"; do
  name=${group%%|*}
  echo "-- $name"
  grep -E "^(FAILED|ERROR)|passed|failed|Timeout|Terminated" "$LOGS/$name.log" | tail -12
done
echo "== done $(date -u +%H:%M:%S)"
