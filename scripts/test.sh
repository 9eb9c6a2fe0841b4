#!/usr/bin/env bash
# Set up and run the whole test suite (Triton's interpreter on CPU, the kernels on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One pytest worker per core (at most 4: GPU tests share one device), tests handed out as workers
# free up; each worker's torch keeps to one thread (tests/conftest.py). 2 cores: ~1.8x faster.
WORKERS=${LIGER_TEST_WORKERS:-$(python3 -c "import os; print(min(4, len(os.sched_getaffinity(0))))")}
python3 -m pytest tests -n "$WORKERS" --dist worksteal "$@"
