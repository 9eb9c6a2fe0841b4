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
# Axolotl's Liger plugin for tests/test_axolotl.py: the package alone, without its requirements (they
# pin another transformers and a CUDA torch), plus addict, the one package its plugin's import path
# adds to ours. Axolotl 0.21 declares Python >= 3.12; the plugin runs on this 3.11 too.
$PIP --no-deps --ignore-requires-python axolotl==0.21.0 addict \
  || echo "axolotl not installed (no package index?): tests/test_axolotl.py will be skipped"
# The client tests' environments (TRL 0.24 with LLaMA-Factory 0.9.5, TRL 1.16), each in its own
# folder under .clients/; without a package index they are left out and those tests skip.
bash scripts/setup_clients.sh
