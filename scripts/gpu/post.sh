#!/usr/bin/env bash
# GPU run for the post-training helper (issue 12), at most 5 minutes, everything in ONE file:
# $OUT/post/results.tgz (logs, results JSON, test logs).
#   0-15 s    setup (editable install, .peer/liger085 unpacked)
#   ~100 s    the post-training tests in 5 pytest processes (100 s cap each), and beside them three
#             warm-up processes that fill Triton's and Inductor's caches on disk: our kernels (every
#             loss type, both DPO routes), torch.compile of the plain paths, Liger 0.8.5's own
#             compiled chunks (no timing happens in this phase)
#   the rest  benchmarks/bench_post_training.py, one process, in order of priority: DPO first
#             (ours = the whole-batch route, ours-1pass = the one-pass route with gathered rows,
#             ours-2pairs, ours-2pass, the plain path; error columns), GRPO, JSD, Liger 0.8.5 (its
#             own process), every DPO and GRPO loss type (--sweep), torch.compile; the JSON is
#             rewritten after each row, so the cap (what is left of 290 s) keeps whatever finished.
# Expected: ~100 s + ~170 s of benchmark + setup: ~4.5-5 min. Results also under
# benchmarks/results/h200/post_training/. Usage, from the repo root, with .peer carried:
#   bash scripts/gpu/post.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOGS="$OUT/post/run"
RESULTS=benchmarks/results/h200/post_training
mkdir -p "$LOGS" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONPATH=src
BENCH="python3 benchmarks/bench_post_training.py"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" \
  | tee "$LOGS/versions.txt"
bash benchmarks/setup_peers.sh >"$LOGS/setup_peers.log" 2>&1 || echo "setup_peers failed (liger085 rows will say so)"

echo "== tests + cache warm-up $(date -u +%H:%M:%S) (${SECONDS}s)"
PYTEST="timeout 100 python3 -m pytest -p no:cacheprovider -o addopts= -q -rfE --durations=5"
$PYTEST tests/test_chunked_preference.py tests/test_preference_syncs.py >"$LOGS/tests_pref.log" 2>&1 &
$PYTEST tests/test_chunked_grpo.py >"$LOGS/tests_grpo.log" 2>&1 &
$PYTEST tests/test_chunked_distillation.py tests/test_fused_linear_distill_ops.py tests/test_jsd.py \
  >"$LOGS/tests_distill.log" 2>&1 &
$PYTEST tests/test_compile_post.py >"$LOGS/tests_compile_post.log" 2>&1 &
$PYTEST tests/test_grpo_loss_op.py tests/test_tvd.py tests/test_kl_div.py tests/test_fused_linear_logprobs.py \
  >"$LOGS/tests_ops.log" 2>&1 &
timeout 100 $BENCH --providers ours,ours-1pass --sweep --warm-only --out "$LOGS" --name warm_ours.json >"$LOGS/warm_ours.log" 2>&1 &
timeout 100 $BENCH --providers compile --warm-only --out "$LOGS" --name warm_compile.json >"$LOGS/warm_compile.log" 2>&1 &
timeout 100 $BENCH --providers liger085 --warm-only --out "$LOGS" --name warm_liger085.json >"$LOGS/warm_liger085.log" 2>&1 &
wait
for f in "$LOGS"/tests_*.log; do echo "$(basename "$f"): $(grep -E '(passed|failed|error)' "$f" | tail -1)"; done

echo "== benchmark $(date -u +%H:%M:%S) (${SECONDS}s)"
timeout $((290 - SECONDS)) $BENCH --losses dpo,grpo,jsd --sweep \
  --providers ours,ours-1pass,ours-2pairs,ours-2pass,plain,liger085,compile --out "$RESULTS" --name post_training.json \
  >"$LOGS/bench.log" 2>&1
echo "exit $? (${SECONDS}s)"
tail -45 "$LOGS/bench.log"
cp "$RESULTS/post_training.json" "$LOGS/" 2>/dev/null
tar -czf "$OUT/post/results.tgz" -C "$OUT/post" run && rm -rf "$LOGS"
echo "== done $(date -u +%H:%M:%S) (${SECONDS}s): $OUT/post/results.tgz"
