#!/usr/bin/env bash
# GPU run for helper rope12 (session 12, issue 13: Qwen2-VL's M-RoPE against Liger 0.8.5 and torch.compile).
# 1. benchmarks/bench_qwen2vl_mrope.py --graph: our kernel's variants (ops/rope.py's TILE, NUM_WARPS, SLOTS;
#    the bench's docstring says what each is), ours on merged tables, Liger 0.8.5 (in its own process, from
#    .peer/liger085) and torch.compile, at the Qwen2.5-VL-3B and Qwen2-VL-7B shapes: wall time (host-bound
#    there), GPU time (CUDA graph replay) and extra memory.
# 2. A second wall-time round of ours and Liger 0.8.5 (no graphs): the host-bound wall's noise between runs.
# 3. End-to-end (benchmarks/e2e.py): the Qwen2.5-VL-3B case, Liger 0.8.5 and ours, each with its RoPE patch on
#    and off (case qwen2.5-vl-3b-4x2048-norope: rope=False; ours off runs HF's eager RoPE): peak memory of a
#    training step with and without each RoPE (Liger's in place, ours out of place). On transformers 5.17
#    Liger's rope=True sets modeling_qwen2_5_vl.apply_multimodal_rotary_pos_emb, which the attention does not
#    call: its two rows should agree.
# Run from the repo root with .peer carried: OUT=/some/dir bash scripts/gpu/rope12.sh
# Expected about 3 minutes on one H200, at most 4 (timeouts 130 + 20 + 90 s). Everything ends up in
# "$OUT/rope12.tgz" (logs, .md/.json tables, e2e/); the folder "$OUT/rope12" is removed after packing.
set -uo pipefail
source "$(dirname "$0")/lib.sh" rope12
[ -d .peer/liger085 ] || bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 \
  || echo "no .peer/liger085: the liger085 columns will say so"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" \
  | tee "$L/versions.txt"

echo "== M-RoPE bench, every provider but eager $(date -u +%H:%M:%S)"
# compile early: a run cut short by its timeout loses the last providers (each written as it finishes)
providers=ours,liger085,compile,ours_tile512,ours_slots,ours_slots_tile512,ours_slots_tile2048
providers+=,ours_slots_tile2048_w8,ours_merged,ours_merged_slots_tile2048
timeout 130 python3 benchmarks/bench_qwen2vl_mrope.py --graph --providers "$providers" --out "$L/qwen2vl_mrope" \
  >"$L/bench.log" 2>&1
echo "bench exit $?"
cat "$L/qwen2vl_mrope.md" 2>/dev/null || tail -5 "$L/bench.log"

echo "== M-RoPE wall, second round $(date -u +%H:%M:%S)"
timeout 20 python3 benchmarks/bench_qwen2vl_mrope.py --providers ours,liger085,ours_slots_tile2048 \
  --out "$L/qwen2vl_mrope_wall2" >"$L/bench_wall2.log" 2>&1
echo "wall round exit $?"
cat "$L/qwen2vl_mrope_wall2.md" 2>/dev/null || tail -5 "$L/bench_wall2.log"

echo "== e2e Qwen2.5-VL-3B, RoPE patch on and off $(date -u +%H:%M:%S)"
timeout 90 python3 benchmarks/e2e.py --cases qwen2.5-vl-3b-4x2048,qwen2.5-vl-3b-4x2048-norope \
  --providers liger085,ours --warmup 2 --steps 3 --timeout-s 40 \
  --out "$L/e2e" >"$L/e2e.log" 2>&1  # each run's line is in e2e.log as it finishes
echo "e2e exit $?"
grep "  e2e " "$L/e2e.log"
cat "$L/e2e/e2e.md" 2>/dev/null

echo "== done $(date -u +%H:%M:%S)"
tar -czf "$OUT/rope12.tgz" -C "$OUT" rope12 && rm -rf "$L"
