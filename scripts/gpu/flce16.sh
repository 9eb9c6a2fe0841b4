#!/usr/bin/env bash
# Issue 16: the exact fused linear cross-entropy's accumulate route against its tile route and Liger
# 0.8.5, alone and end to end. TWO H200s (nvidia-h200-x2; carry .peer), about 4.5 minutes:
#   (0) GPU 0: the routes' tests at their GPU shapes (~40 s).
#   (1) flce_exact.py, N=8192 and 2048, every exact provider (the rule's route, each route, the
#       accumulate route's chunk sizes, the kept shares) + both fast ones, then Liger 0.8.5 in its own
#       process: H=2048 on GPU 0 beside H=4096 on GPU 1 (~1.5 min each).
#   (2) bench_multigpu.py, FSDP2 and DDP on both GPUs: ours (its rule: the accumulate route at this
#       shape, N=8192 per GPU at H=2048), ours-tiles (the previous default), Liger 0.8.5 (6 torchruns
#       of ~25 s: ~2.5 min). ours-accumulate would repeat ours here.
# Logs in "$OUT/flce16/"; results in benchmarks/results/h200/flce16/ (multigpu.md there, not over the
# committed three-wrapper table).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/flce16"
R=benchmarks/results/h200/flce16
mkdir -p "$L" "$R"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1
OURS=src
PEER=.peer/liger085
flce() {  # flce <gpu> <hidden>
  export CUDA_VISIBLE_DEVICES=$1
  PYTHONPATH=$OURS timeout 170 python benchmarks/flce_exact.py --hidden "$2" --tokens 8192,2048 \
    --providers "exact-all,fast (accum bf16),fast accum fp32" --out "$R/h$2" >"$L/flce_h$2_ours.log" 2>&1
  PYTHONPATH=$PEER timeout 90 python benchmarks/flce_exact.py --hidden "$2" --tokens 8192,2048 \
    --providers liger085 --out "$R/h$2_liger" >"$L/flce_h$2_liger.log" 2>&1
}
(
  CUDA_VISIBLE_DEVICES=0 PYTHONPATH=$OURS timeout 120 python -m pytest -q -p no:cacheprovider \
    tests/test_fused_linear_cross_entropy.py -k "accumulate_route or rule or scaled_as or peak_memory or (parity and accumulate)" \
    >"$L/tests.log" 2>&1
  flce 0 2048
) &
flce 1 4096 &
wait
PYTHONPATH=$OURS timeout 270 python benchmarks/bench_multigpu.py --wrappers fsdp2,ddp \
  --providers ours,ours-tiles,liger085 --out "$R" >"$L/multigpu.log" 2>&1
cp "$R"/*.md "$L"/ 2>/dev/null
tail -n 3 "$L/tests.log"
for f in "$L"/flce_*.log; do echo "== $f"; sed -n '/H=/,$p' "$f"; done
cat "$R/multigpu.md"
