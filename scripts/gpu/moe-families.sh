#!/usr/bin/env bash
# MoE families (issue 14, part 2) on the GPU: tests/test_convergence_moe.py (every MoE family of the
# table, stock vs patched, fp32 and bf16, with the RoPE kernel; the auxiliary loss; instance patch and
# revert) at the GPU sizes of tests/test_convergence.py (hidden 1024, 4 layers), then the API names.
# Logs: "$OUT/moe-families/". About 3 minutes on one H200 (each stage bounded).
set -uo pipefail
cd "$(dirname "$0")/../.."
LOG="${OUT:-/tmp}/moe-families"
mkdir -p "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, transformers, triton; print(torch.__version__, triton.__version__, transformers.__version__)" \
  | tee "$LOG/versions.txt"
timeout 180 python -m pytest tests/test_convergence_moe.py -q -p no:cacheprovider -o addopts="" -rfEs --durations=10 \
  > "$LOG/convergence_moe.log" 2>&1
tail -25 "$LOG/convergence_moe.log"
timeout 50 python -m pytest tests/test_api_names.py -q -p no:cacheprovider -o addopts="" -rfE > "$LOG/api_names.log" 2>&1
tail -5 "$LOG/api_names.log"
