#!/usr/bin/env bash
# Session 8, first GPU call (~9.5 min on one H200, carry .peer): every GPU test group that failed or
# was cut in session 7, in parallel on the one GPU (tiny shapes; -rfE for the messages), then the two
# benchmarks never run (post-training with the JSD block settings; torch.compile over patched models).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
bash benchmarks/setup_peers.sh >"$OUT/setup_peers.log" 2>&1 || echo "setup_peers failed"
echo "== tests $(date -u +%H:%M:%S)"
groups=("tests/test_convergence.py" "tests/test_convergence_moe.py" "tests/test_convergence_vlm.py tests/test_structural_patch.py"
        "tests/test_compile.py" "tests/test_fused_moe.py tests/test_grpo_loss_op.py")
for i in "${!groups[@]}"; do
  timeout "${TESTS_S:-225}" python3 -m pytest ${groups[$i]} -p no:cacheprovider -o addopts="" -q -rfE --durations=5 \
    >"$OUT/tests_$i.log" 2>&1 &
done
wait
for i in "${!groups[@]}"; do echo "-- ${groups[$i]}"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_$i.log" | tail -25; done
echo "== post-training bench $(date -u +%H:%M:%S)"
timeout 100 python3 benchmarks/bench_post_training.py --losses jsd,dpo,grpo \
  --providers ours,plain,liger085,ours-L512,ours-K4096,ours-L512K4096 --out benchmarks/results/h200/post_training >"$OUT/post_bench.log" 2>&1
echo "exit $?"; tail -20 "$OUT/post_bench.log"
echo "== compile bench $(date -u +%H:%M:%S)"
timeout "${COMPILE_S:-190}" python3 benchmarks/bench_compile.py --out benchmarks/results/h200 --timeout-s 90 --warmup 2 --steps 4 >"$OUT/compile_bench.log" 2>&1
echo "exit $?"; tail -c 4000 "$OUT/compile_bench.log"
mkdir -p "$OUT/results"; cp -r benchmarks/results/h200/post_training benchmarks/results/h200/compile.* "$OUT/results/" 2>/dev/null
echo "== done $(date -u +%H:%M:%S)"
