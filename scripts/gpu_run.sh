#!/usr/bin/env bash
# On a lent GPU machine (no network): install this checkout, then run one or more stages, writing
# logs under $OUT. Usage: bash scripts/gpu_run.sh STAGE[,STAGE...]
#   tests  the test suite ($TEST_ARGS for pytest)   bench  benchmarks/run.py --quick ($BENCH_ARGS)
#   e2e    benchmarks/e2e.py ($E2E_ARGS)            host   benchmarks/host_cost.py ($HOST_ARGS)
#   env    python -m liger_kernel.env_report
#   ptests test groups in parallel on the one GPU: TEST_GROUPS="a.py b.py;c.py" (one pytest each)
# Each stage gets at most STAGE_S seconds (default 540). Results go to $RESULTS (default
# benchmarks/results/h200) and come back as $OUT/results.tgz. Carry .peer for bench/e2e/host
# (benchmarks/setup_peers.sh unpacks the peer wheels from there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
RESULTS=${RESULTS:-benchmarks/results/h200}
STAGE_S=${STAGE_S:-540}
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1
# --no-build-isolation: the machine has setuptools but no index to fetch a build environment from
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
stages=${1:-tests}
for stage in ${stages//,/ }; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case "$stage" in
    tests)
      timeout "$STAGE_S" python3 -m pytest ${TEST_ARGS:-tests} -p no:cacheprovider -o addopts="" -rfE --durations=10 \
        >"$OUT/gpu_tests.log" 2>&1
      tail -25 "$OUT/gpu_tests.log" ;;
    bench)
      bash benchmarks/setup_peers.sh >/dev/null
      timeout "$STAGE_S" python3 benchmarks/run.py --quick --budget-s $((STAGE_S - 70)) --out "$RESULTS" ${BENCH_ARGS:-} \
        >"$OUT/bench.log" 2>&1
      tail -c 5000 "$OUT/bench.log" ;;
    e2e)
      bash benchmarks/setup_peers.sh >/dev/null
      timeout "$STAGE_S" python3 benchmarks/e2e.py --out "$RESULTS" ${E2E_ARGS:-} >"$OUT/e2e.log" 2>&1
      tail -c 3000 "$OUT/e2e.log" ;;
    host)
      bash benchmarks/setup_peers.sh >/dev/null
      for p in ours eager floor liger085; do
        path=src
        [ "$p" = liger085 ] && path=.peer/liger085
        PYTHONPATH=$path timeout $((STAGE_S / 3)) python3 benchmarks/host_cost.py --provider "$p" ${HOST_ARGS:-} \
          >>"$OUT/host_cost.log" 2>&1
      done
      tail -c 4000 "$OUT/host_cost.log" ;;
    ptests)
      IFS=';' read -ra groups <<<"$TEST_GROUPS"
      for i in "${!groups[@]}"; do
        timeout "$STAGE_S" python3 -m pytest ${groups[$i]} -p no:cacheprovider -o addopts="" -q -rfE --durations=5 \
          >"$OUT/gpu_tests_$i.log" 2>&1 &
      done
      wait
      for log in "$OUT"/gpu_tests_*.log; do echo "-- $log"; grep -E "^(FAILED|ERROR)|passed|failed" "$log" | tail -15; done ;;
    env)
      python3 -m liger_kernel.env_report 2>&1 | tee "$OUT/env_report.txt" ;;
  esac
done
tar czf "$OUT/results.tgz" "$RESULTS"
