#!/usr/bin/env bash
# Fused MoE experts (issue 14, part 1) on the GPU: its tests, then the experts-block benchmark
# (ours vs transformers' eager and grouped_mm experts vs Liger 0.8.5), results written under
# benchmarks/results/h200/moe/ (moe.md, moe.json, moe.png where matplotlib is installed) and logs
# under "$OUT/moe-kernel/". At most 4 minutes (tests ~1, benchmark ~2.5; with two GPUs Liger 0.8.5,
# which autotunes for minutes, runs on the second one meanwhile and is dropped if it runs out of time).
set -uo pipefail
cd "$(dirname "$0")/../.."
LOG="${OUT:-/tmp}/moe-kernel"
mkdir -p "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
bash benchmarks/setup_peers.sh > "$LOG/setup_peers.log" 2>&1 || echo "setup_peers failed: no Liger 0.8.5 row"
timeout 80 python -m pytest tests/test_fused_moe.py -q -p no:cacheprovider 2>&1 | tail -30 | tee "$LOG/tests.log"
timeout 155 python benchmarks/bench_moe.py --out benchmarks/results/h200/moe --timeout 140 --profile 2>&1 \
  | tee "$LOG/bench.log" | grep -v "^|\|^$" | tail -5
cat benchmarks/results/h200/moe/moe.md 2>/dev/null
cp benchmarks/results/h200/moe/moe.* "$LOG/" 2>/dev/null || true
