#!/usr/bin/env bash
# The README's first command: install liger-kernel (as scripts/setup.sh does), then train a small
# Llama twice, stock Hugging Face and patched, and print the losses, tokens/s and peak memory side
# by side. Arguments go to the demo: --steps N, --device cuda|cpu, --size tiny|small|large.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m liger_kernel.demo "$@"
