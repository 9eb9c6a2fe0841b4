#!/usr/bin/env bash
# GPU run for helper vlm13 (session 8): the vision-language convergence tests this branch adds or
# changes (Gemma 4, Llama 4 and the two vision-language MoEs through the multimodal forward, fp32 and
# bf16, instance patch/revert) and the MoE tests of glm4v_moe / qwen3_vl_moe (router loss, revert).
# Logs under $OUT/vlm13/. Expected: ~3 minutes, at most 6 (pytest runs bounded: 150, 150 and 60 s).
# Usage, from the repo root: bash scripts/gpu/vlm13.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOGS="$OUT/vlm13"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" \
  | tee "$LOGS/versions.txt"
run() {  # name limit pytest-arguments...
  local name=$1 limit=$2
  shift 2
  echo "== $name $(date -u +%H:%M:%S)"
  timeout "$limit" python3 -m pytest "$@" -p no:cacheprovider -o addopts="" -q -rfE --durations=10 >"$LOGS/$name.log" 2>&1
  echo "exit $?"
  tail -15 "$LOGS/$name.log"
}
run convergence_vlm_gemma4_llama4 150 tests/test_convergence_vlm.py -k "gemma4 or llama4 or has_a_model"
run convergence_vlm_moe 150 tests/test_convergence_vlm.py -k "moe"
run convergence_moe 60 tests/test_convergence_moe.py -k "(instance or aux) and (glm4v_moe or qwen3_vl_moe)"
