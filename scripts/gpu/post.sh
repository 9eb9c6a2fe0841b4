#!/usr/bin/env bash
# GPU run for the post-training helper (session 7, issue 12): the post-training tests at their GPU
# sizes, then benchmarks/bench_post_training.py (DPO, GRPO, JSD distillation: ours, plain,
# torch.compile, Liger 0.8.5 in its own process; JSD also with three block settings of ours, to
# find the one that reaches 75% of the floor; then ours with every DPO and GRPO loss type).
# Logs under $OUT/post/, results under benchmarks/results/h200/post_training/ (also copied to
# $OUT/post/). Expected: ~5 minutes, at most 350 s (tests 110 s, benchmark 110 s, compile 60 s,
# loss types 60 s; setup ~10 s).
# Usage, from the repo root, with .peer carried: bash scripts/gpu/post.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOGS="$OUT/post"
RESULTS=benchmarks/results/h200/post_training
mkdir -p "$LOGS" "$RESULTS"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" \
  | tee "$LOGS/versions.txt"
bash benchmarks/setup_peers.sh >"$LOGS/setup_peers.log" 2>&1 || echo "setup_peers failed (liger085 rows will say so)"

echo "== tests $(date -u +%H:%M:%S)"
timeout 110 python3 -m pytest tests/test_chunked_*.py tests/test_grpo_loss_op.py tests/test_tvd.py tests/test_jsd.py \
  tests/test_kl_div.py tests/test_fused_linear_logprobs.py tests/test_fused_linear_distill_ops.py \
  -p no:cacheprovider -o addopts="" -q -rfE --durations=10 >"$LOGS/tests.log" 2>&1
echo "exit $?"
tail -25 "$LOGS/tests.log"

echo "== benchmark $(date -u +%H:%M:%S)"
PYTHONPATH=src timeout 110 python3 benchmarks/bench_post_training.py --losses dpo,grpo,jsd \
  --providers ours,plain,liger085,ours-L512,ours-K4096,ours-L512K4096 --out "$RESULTS" >"$LOGS/bench.log" 2>&1
echo "exit $?"
tail -20 "$LOGS/bench.log"

echo "== torch.compile $(date -u +%H:%M:%S)"
PYTHONPATH=src timeout 60 python3 benchmarks/bench_post_training.py --losses dpo,grpo,jsd --providers compile \
  --no-errors --out "$RESULTS" --name compile.json >"$LOGS/compile.log" 2>&1
echo "exit $?"
tail -8 "$LOGS/compile.log"

echo "== every loss type $(date -u +%H:%M:%S)"
PYTHONPATH=src timeout 60 python3 benchmarks/bench_post_training.py --losses dpo,grpo --providers ours --sweep \
  --no-errors --out "$RESULTS" --name loss_types.json >"$LOGS/loss_types.log" 2>&1
echo "exit $?"
tail -24 "$LOGS/loss_types.log"
cp "$RESULTS"/*.json "$LOGS/" 2>/dev/null
echo "== done $(date -u +%H:%M:%S)"
