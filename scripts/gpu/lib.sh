# Sourced by the session GPU scripts (`source "$(dirname "$0")/lib.sh" NAME`): the repo root as the
# working folder, $OUT (default /tmp/out), the log folder $L = $OUT/NAME, our src first on PYTHONPATH.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/$1"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
date -u +%H:%M:%S
