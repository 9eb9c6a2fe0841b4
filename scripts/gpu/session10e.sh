#!/usr/bin/env bash
# Session 10, last call, ONE H200 (carry .peer), ~4 min:
#   1. side by side (five processes): the post-training tests after the input-preparation fold and the
#      fp32 bounds from the loss head's condition (preference; log-probs + the host-sync test; GRPO +
#      chunked distillation), the M-RoPE / Llama 4 RoPE tests (in place), the VL convergence half with
#      mllama (the reversed-rows second stock run, zero-bias bound);
#   2. alone: the M-RoPE and Llama 4 RoPE benchmarks (--graph).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/e"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
date -u +%H:%M:%S
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed"
run() { timeout 170 python3 -m pytest "${@:2}" -p no:cacheprovider -o addopts="" -q -rfEX --durations=3 >"$L/t_$1.log" 2>&1; }
run preference tests/test_chunked_preference.py &
run logprobs tests/test_fused_linear_logprobs.py tests/test_preference_syncs.py &
run grpo_distill tests/test_chunked_grpo.py tests/test_chunked_distillation.py &
run rope tests/test_qwen2vl_mrope.py tests/test_llama4_rope.py &
run vlm_fp32_b tests/test_convergence_vlm.py -k "not dtype1 and not (gemma3 or gemma4 or glm4v or internvl or llama4 or llava)" &
wait
date -u +%H:%M:%S
for f in "$L"/t_*.log; do echo "-- $(basename "$f"): $(grep -E '(passed|failed|error)' "$f" | tail -1)"; grep -E "^(FAILED|ERROR|XPASS)|^E  " "$f" | head -10 | cut -c1-300; done
for b in "qwen2vl_mrope 45 --providers ours,liger085,compile,eager" "llama4_rope 40"; do
  set -- $b
  echo "== bench $1 $(date -u +%H:%M:%S)"
  timeout "$2" python3 "benchmarks/bench_$1.py" --graph --out "$L/$1" "${@:3}" >"$L/bench_$1.log" 2>&1
  echo "exit $?"; grep "|" "$L/$1.md" 2>/dev/null | cut -c1-400
done
date -u +%H:%M:%S
} 2>&1 | tee "$OUT/summary.log"
tar czf "$OUT/e.tgz" -C "$OUT" e
