# Sourced by the session GPU scripts (`source "$(dirname "$0")/lib.sh" NAME`): the repo root as the
# working folder, $OUT (default /tmp/out), the log folder $L = $OUT/NAME, our src first on PYTHONPATH.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/$1"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
date -u +%H:%M:%S
# benchmarks/flce_exact.py at one head, its JSON rows printed: flce NAME TOKENS HIDDEN VOCAB PROVIDERS [TIMEOUT_S]
flce() {
  timeout "${6:-150}" python3 benchmarks/flce_exact.py --out "$L/$1" --tokens "$2" --errors "" --hidden "$3" \
    --vocab "$4" --providers "$5" >"$L/flce_$1.log" 2>&1
  echo "flce $1 exit $?"; grep -E '^\{' "$L/flce_$1.log"
}
# Issue 13's Gemma 3 e2e table in one run (stock, ours, Liger 0.8.5; ours with tiled_mlp=True): gemma3_e2e
gemma3_e2e() {
  local G=gemma3-4b-2x2048
  timeout 330 python3 benchmarks/e2e.py --cases $G,$G-tiled --providers hf,ours,liger085 --timeout-s 75 \
    --skip "$G-tiled/hf,$G-tiled/liger085" --out "$L/e2e_gemma3" >"$L/e2e_gemma3.log" 2>&1
  echo "e2e exit $?"; tail -8 "$L/e2e_gemma3.log"
}
# benchmarks/bench_tiled_mlp.py with CUDA-graph GPU times: tiled_mlp NAME PROVIDERS [CASES] [TIMEOUT_S]
tiled_mlp() {
  timeout "${4:-300}" python3 benchmarks/bench_tiled_mlp.py --graph --out "$L/$1" ${3:+--cases "$3"} \
    --providers "$2" >"$L/$1.log" 2>&1
  echo "bench exit $?"; tail -9 "$L/$1.log"
}
# This checkout installed editable (the machine has no package index: no build isolation): install_here
install_here() {
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
}
# pytest's options for a session's test runs, and each log's summary line and failures: summarize NAME...
PT="-p no:cacheprovider -o addopts= -q -rfEs --durations=5"
summarize() {
  for f in "$@"; do
    echo "-- $f: $(grep -E '(passed|failed|error)' "$L/$f.log" | tail -1)"
    grep -E "^(FAILED|ERROR)|^E +AssertionError" "$L/$f.log" | cut -c1-300 | head -25
  done
}
