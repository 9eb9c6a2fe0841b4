#!/usr/bin/env bash
# Client environments for the client tests (tests/test_clients_import.py, test_trl_trainers.py,
# test_llamafactory.py): each client in its own `pip install --target` folder
# under .clients/, every package --no-deps and pinned (never a CUDA torch, nothing of the main
# environment replaced). A test runs the client's Python with PYTHONPATH=src:.clients/<env>:.clients/common,
# so the folder's packages shadow the main environment's and torch comes from it.
#   trl024: LLaMA-Factory 0.9.5 on versions inside its pins (transformers<=5.6.0, datasets<=4.0.0,
#           accelerate<=1.11.0, peft<=0.18.1, trl<=0.24.0) that run: transformers 4.57.6, since TRL 0.24
#           cannot import its trainers under transformers 5 (its optional-package checks read
#           transformers 5's (bool, version) tuples as true and import mergekit), plus the few packages
#           LLaMA-Factory's training path imports.
#   trl116: TRL 1.16 (current) on the main environment's transformers, and datasets 4.8.5 with its pins
#           (datasets 5.x cannot fingerprint a dataset here: dill fails on pyarrow's MonthDayNano).
#   common: pandas, pyarrow and xxhash, the same versions for both.
# Reruns are instant (a folder whose .requirements matches is kept). Without a package index an
# environment is left out and .clients/<env>.skip says why; the tests skip with that reason.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=.clients
mkdir -p "$ROOT"

COMMON="pandas==2.3.3 pytz==2025.2 tzdata==2025.2 pyarrow==26.0.1 xxhash==4.1.0"
TRL024="llamafactory==0.9.5 trl==0.24.0 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2
  accelerate==1.11.0 peft==0.18.1 datasets==4.0.0 fsspec==2025.3.0 dill==0.3.8 multiprocess==0.70.16 omegaconf==2.4.0"
TRL116="trl==1.16.0 datasets==4.8.5 huggingface_hub==1.33.0 httpx==0.28.1 httpcore==1.0.9 fsspec==2026.2.0
  dill==0.4.1 multiprocess==0.70.19"

install() {
  local name=$1 requirements dir=$ROOT/$1
  requirements=$(echo "$2" | xargs -n1 | sort | xargs)
  if [ -f "$dir/.requirements" ] && [ "$(cat "$dir/.requirements")" = "$requirements" ]; then
    return 0
  fi
  rm -rf "$dir" "$dir.tmp" "$dir.skip"
  # shellcheck disable=SC2086
  if python3 -m pip install -q --disable-pip-version-check --retries 2 --timeout 30 --no-deps --no-compile --target "$dir.tmp" \
    $requirements >"$dir.log" 2>&1; then
    mv "$dir.tmp" "$dir" && echo "$requirements" >"$dir/.requirements" && rm -f "$dir.log"
  else
    rm -rf "$dir.tmp"
    echo "pip could not install $requirements (no package index?): see $dir.log" >"$dir.skip"
    echo "client environment $name not installed: the tests that need it will be skipped ($dir.log)"
  fi
}

install common "$COMMON"
install trl024 "$TRL024"
install trl116 "$TRL116"
