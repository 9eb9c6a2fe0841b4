#!/usr/bin/env bash
# Set up and run the whole test suite (Triton's interpreter on CPU, the kernels on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One pytest worker per core (at most 4: GPU tests share one device), tests handed out as workers
# free up (2 cores: 19 instead of 38 minutes). Each worker keeps torch's default thread count: with
# one thread per worker the CPU reductions' order changed and a gradient that is zero in exact
# arithmetic (SigLIP's key bias) drew other rounding noise than its stock yardstick.
WORKERS=${LIGER_TEST_WORKERS:-$(python3 -c "import os; print(min(4, len(os.sched_getaffinity(0))))")}
python3 -m pytest tests -n "$WORKERS" --dist worksteal "$@"
