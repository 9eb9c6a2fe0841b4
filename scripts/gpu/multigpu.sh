#!/usr/bin/env bash
# Multi-GPU checks on a machine with two GPUs (about 4-5 min in all): the two-process NCCL cases of
# tests/distributed_cases.py (DDP, FSDP2, FSDP1, TP=2 norms and vocabulary-parallel losses, then the
# Hugging Face Trainer under FSDP1 and DeepSpeed ZeRO-2/3) and benchmarks/bench_multigpu.py.
#   bash scripts/gpu/multigpu.sh [tests|trainer|bench|all]
# Run from the repo root (or a copy of src/tests/benchmarks/scripts; .peer/ is looked up one folder
# up too). DeepSpeed: its wheel and the ones it lacks on the GPU image (pydantic, pydantic-core,
# annotated-types, typing-inspection, typing-extensions, hjson) in $DS_WHEELS (default wheels/),
# installed into /tmp/ds_site. Logs under "$OUT/multigpu/"; results in benchmarks/results/h200/.
set -uo pipefail
PART="${1:-all}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
LOGS="${OUT:-/tmp}/multigpu"
mkdir -p "$LOGS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DS_WHEELS="${DS_WHEELS:-wheels}"
if ls "$DS_WHEELS"/*.whl >/dev/null 2>&1 && ! python3 -c "import deepspeed" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ds_site "$DS_WHEELS"/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/ds_site"
fi
export DS_BUILD_OPS=0 DS_ACCELERATOR=cuda
python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee "$LOGS/deepspeed.log"
port() { python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
status=0
if [ "$PART" = tests ] || [ "$PART" = all ]; then
  timeout 240 python3 tests/distributed_cases.py ddp,fsdp2,fsdp2-head,fsdp1,tp-norms,tp-vocab-ce,tp-flce "$(port)" \
    2>&1 | tee "$LOGS/tests.log" || status=1
fi
if [ "$PART" = trainer ] || [ "$PART" = all ]; then
  timeout 240 python3 tests/distributed_cases.py trainer-fsdp1,trainer-zero2,trainer-zero3 "$(port)" \
    2>&1 | tee "$LOGS/trainer.log" || status=1
fi
if [ "$PART" = bench ] || [ "$PART" = all ]; then
  timeout 560 python3 benchmarks/bench_multigpu.py ${BENCH_ARGS:-} 2>&1 | tee "$LOGS/bench.log" || status=1
fi
exit $status
