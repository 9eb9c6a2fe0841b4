#!/usr/bin/env bash
# Fused MoE experts (issue 14, part 1) on the GPU: its tests, then the experts-block benchmark
# (ours vs transformers' eager and grouped_mm experts vs Liger 0.8.5), results written under
# benchmarks/results/h200/moe/ and logs under "$OUT/moe-kernel/". About 3 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/../.."
LOG="${OUT:-/tmp}/moe-kernel"
mkdir -p "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
bash benchmarks/setup_peers.sh > "$LOG/setup_peers.log" 2>&1 || echo "setup_peers failed: Liger 0.8.5 row skipped"
timeout 90 python -m pytest tests/test_fused_moe.py -q -p no:cacheprovider 2>&1 | tail -30 | tee "$LOG/tests.log"
timeout 150 python benchmarks/bench_moe.py --out benchmarks/results/h200/moe --profile 2>&1 | tee "$LOG/bench.log"
cp benchmarks/results/h200/moe/moe.* "$LOG/" 2>/dev/null || true
