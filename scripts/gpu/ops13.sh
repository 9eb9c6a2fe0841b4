#!/usr/bin/env bash
# torch.compile for the layer ops of ops/library_layers.py (issue 15): opcheck of M-RoPE, Llama 4 RoPE,
# fused add RMSNorm and the fused MoE experts; compiled (Inductor) fwd+bwd against eager and zero graph
# breaks for them and the tiled MLP; then the eager tests of the ops whose call sites changed.
# Run from the repo root: OUT=/some/dir bash scripts/gpu/ops13.sh   (about 2 min on one H200)
# Logs: $OUT/ops13/.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOG="$OUT/ops13"
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
pytest_args=(-q -p no:cacheprovider -o addopts="" -rfE --durations=8)
timeout 150 python3 -m pytest tests/test_compile_ops13.py "${pytest_args[@]}" >"$LOG/compile_ops13.log" 2>&1 &
timeout 150 python3 -m pytest tests/test_tiled_mlp.py tests/test_qwen2vl_mrope.py tests/test_llama4_rope.py \
  tests/test_fused_add_rms_norm.py tests/test_fused_moe.py -k "not benchmark" "${pytest_args[@]}" \
  >"$LOG/eager_ops.log" 2>&1
eager=$?
wait %1; compiled=$?
echo "exit: compile_ops13 $compiled, eager ops $eager"
tail -6 "$LOG/compile_ops13.log" "$LOG/eager_ops.log"
exit $((compiled || eager))
