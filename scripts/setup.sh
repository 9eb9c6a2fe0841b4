#!/usr/bin/env bash
# Install liger-kernel for development. Without a GPU: the CPU build of torch from the local
# wheel and Triton 3.9 for its interpreter. With one: keep the machine's CUDA torch and Triton.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install -q --disable-pip-version-check"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  $PIP torch==2.13.0 triton==3.9.0
fi
$PIP -e ".[dev]"
