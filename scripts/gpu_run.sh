#!/usr/bin/env bash
# On a lent GPU machine (no network): install this checkout, then run the test suite or the
# benchmarks, writing logs under $OUT. Usage: bash scripts/gpu_run.sh tests|bench|e2e [pytest /
# benchmarks/run.py / benchmarks/e2e.py args]
# (carry .peer for bench/e2e: benchmarks/setup_peers.sh unpacks the peer wheels from there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# --no-build-isolation: the machine has setuptools but no index to fetch a build environment from
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
case "${1:-tests}" in
  tests)
    shift || true
    timeout 560 python3 -m pytest tests -p no:cacheprovider -o addopts="" -rfE --durations=10 "$@" 2>&1 \
      | tee "$OUT/gpu_tests.log" | tail -40 ;;
  bench)
    shift || true
    bash benchmarks/setup_peers.sh >/dev/null
    timeout 560 python3 benchmarks/run.py --quick --budget-s 470 --out benchmarks/results/h100 "$@" > "$OUT/bench.log" 2>&1
    tail -c 6000 "$OUT/bench.log"
    tar czf "$OUT/h100.tgz" -C benchmarks/results h100 ;;
  e2e)
    shift || true
    bash benchmarks/setup_peers.sh >/dev/null
    timeout 430 python3 benchmarks/e2e.py --out "$OUT/e2e" "$@" > "$OUT/e2e.log" 2>&1
    tail -c 3000 "$OUT/e2e.log" ;;
esac
