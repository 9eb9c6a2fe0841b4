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
