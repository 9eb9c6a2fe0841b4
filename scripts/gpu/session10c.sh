#!/usr/bin/env bash
# Session 10, third call, TWO H200s (carry .peer), under 10 minutes:
#   0. both GPUs: issue 16's ZeRO-3 case, ours (the head's backward tiles halved under ZeRO-3) vs Liger 0.8.5;
#   1. GPU 0 alone: scripts/gpu/tiled13.sh (the tiled MLP's tests, then its benchmarks vs Liger and compile);
#      GPU 1: test groups, at most four at once: MoE convergence fp32 / bf16 (the harness's third sample),
#      the distillation op tests (GPU chunking fixed), moe10_norm_probe.py with the moved-inputs stock run.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/c"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
date -u +%H:%M:%S
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed"
OUT="$L" BENCH_ARGS="--wrappers zero3 --providers ours,liger085 --out $L/zero3" bash scripts/gpu/multigpu.sh bench >"$L/zero3.log" 2>&1
echo "zero3 exit $?"; grep "|" "$L/zero3/multigpu.md"
(CUDA_VISIBLE_DEVICES=0 OUT="$L" RESULTS="$L/results" timeout 420 bash scripts/gpu/tiled13.sh >"$L/tiled13.log" 2>&1) &
export CUDA_VISIBLE_DEVICES=1
jobs_list=(
  "moe_fp32|tests/test_convergence_moe.py -k not_dtype1"
  "moe_bf16|tests/test_convergence_moe.py -k dtype1"
  "distill_ops|tests/test_fused_linear_distill_ops.py tests/test_tvd.py"
)
for g in "${jobs_list[@]}"; do
  name=${g%%|*}; args=${g#*|}
  if [[ "$args" == *" -k "* ]]; then files=${args%% -k *}; k=${args##* -k }; k=${k//not_/not }
    timeout 400 python3 -m pytest $files -k "$k" -p no:cacheprovider -o addopts="" -q -rfE --durations=3 >"$L/t_$name.log" 2>&1 &
  else
    timeout 400 python3 -m pytest $args -p no:cacheprovider -o addopts="" -q -rfE --durations=3 >"$L/t_$name.log" 2>&1 &
  fi
done
timeout 400 python3 scripts/gpu/moe10_norm_probe.py qwen3_5_moe:fp32 gpt_oss:fp32 deepseek_v4:fp32 >"$L/norm_probe.log" 2>&1 &
wait
date -u +%H:%M:%S
for g in "${jobs_list[@]}"; do name=${g%%|*}; echo "-- $name: $(grep -E '(passed|failed|error)' "$L/t_$name.log" | tail -1)"; grep -E "^(FAILED|ERROR)" "$L/t_$name.log" | head -12; done
grep -v "^\[transformers\]" "$L/norm_probe.log" | grep -E "==|norms  |moved" | cut -c1-300
tail -40 "$L/tiled13.log"
} 2>&1 | tee "$OUT/summary.log"
tar czf "$OUT/c.tgz" -C "$OUT" c
