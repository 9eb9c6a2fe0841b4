#!/usr/bin/env bash
# Unpack the peer libraries the benchmarks compare against into isolated folders under .peer/,
# offline (the GPU machine has no network). Liger Kernel 0.8.5 has our import name
# (`liger_kernel`), so it lives in its own folder and runs only in its own process, with
# PYTHONPATH pointing there (benchmarks/run.py does that). Both wheels are pure Python and need
# only torch and triton (their METADATA's Requires-Dist), which the GPU image has.
#
# The wheels are fetched once, on a machine with network, into .peer/ (git-ignored):
#   python3 -m pip download --no-deps -d .peer liger-kernel==0.8.5 cut-cross-entropy==25.1.1
set -euo pipefail
cd "$(dirname "$0")/.."
install() {  # install <wheel> <target folder>
  if [ -d "$2" ] && [ -n "$(ls -A "$2" 2>/dev/null)" ]; then
    echo "setup_peers: $2 already unpacked"
    return
  fi
  if [ ! -f "$1" ]; then
    echo "setup_peers: $1 missing; fetch it with the pip download line in this script" >&2
    return 1
  fi
  python3 -m pip install -q --disable-pip-version-check --no-deps --no-index --no-compile --target "$2" "$1"
  echo "setup_peers: $1 -> $2"
}
install .peer/liger_kernel-0.8.5-py3-none-any.whl .peer/liger085
install .peer/cut_cross_entropy-25.1.1-py3-none-any.whl .peer/cce
