#!/usr/bin/env bash
# Set up and run the whole test suite (Triton's interpreter on CPU, the kernels on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest tests "$@"
