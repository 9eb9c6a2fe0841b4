"""benchmarks/compile_floor.py: the smoke run (tiny shapes on the CPU, real rows from a results file)
writes its tables, and the profile arithmetic it rests on (busy time, kernel categories) is right."""

import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_compile  # noqa: E402
import compile_floor  # noqa: E402


def _kernel(name, ts, dur, cat="kernel"):
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X"}


def test_kernel_profile_counts_overlaps_once():
    events = [
        _kernel("b", 5, 10),  # 5-15 overlaps a (0-10)
        _kernel("a", 0, 10),
        _kernel("a", 30, 5),  # a gap of 15 before it
        _kernel("c", 31, 2),  # inside the previous one
        _kernel("x", 0, 100, cat="cpu_op"),  # not device activity
        _kernel("m", 40, 1, cat="gpu_memcpy"),
    ]
    profile = bench_compile.kernel_profile(events)
    assert profile["kernels"] == {"a": [2, 15.0], "b": [1, 10.0], "c": [1, 2.0], "m": [1, 1.0]}
    assert profile["busy_us"] == 15 + 5 + 1
    assert profile["span_us"] == 41


def test_host_ops_by_inclusive_host_time():
    """``host_ops``: calls, inclusive and self host time per operator, the costliest first (an
    operator's inclusive time covers what it calls)."""
    import torch

    a = torch.randn(64, 64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            torch.nn.functional.linear(a, a)
        a.add(1)
    ops = bench_compile.host_ops(prof)
    assert ops["aten::linear"][0] == 3 and ops["aten::add"][0] == 1
    assert all(inclusive >= own for _, inclusive, own in ops.values())
    inclusive = [v[1] for v in ops.values()]
    assert inclusive == sorted(inclusive, reverse=True) and ops["aten::linear"][1] >= ops["aten::mm"][1]


def test_categorize():
    ours = compile_floor.our_kernel_names()
    assert "_gated_forward_kernel" in ours
    cases = {
        "nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTT": "gemm",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64": "gemm",
        "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>": "attention",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
        "triton_poi_fused__to_copy_add_0": "Inductor (Triton)",
        "triton_tem_fused_mm_0": "gemm",
        "_gated_forward_kernel": "ours (Triton)",
        "void at::native::indexSelectLargeIndex<c10::BFloat16, long>": "embedding",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, float, float, float>": "torch loss",
        "Memcpy DtoD (Device -> Device)": "copies/other",
    }
    for name, category in cases.items():
        assert compile_floor.categorize(name, ours) == category, name


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="the smoke run launches the fused MLP's kernels on CPU tensors: Triton's interpreter (CPU machines)",
)
def test_smoke_run_writes_the_tables(tmp_path):
    profile = bench_compile.kernel_profile(
        [
            _kernel("nvjet_hsh_gemm", 0, 700),
            _kernel("_gated_forward_kernel", 700, 100),
            _kernel("triton_poi_x", 900, 50),
        ]
    )
    rows = [
        dict(case="llama-tiny", variant=v, status="ok", step_ms=ms, tokens_per_s=16 / ms * 1000, profile=profile)
        for v, ms in (("hf-compile", 1.2), ("ours-compile", 1.0))
    ]
    real = tmp_path / "compile.json"
    real.write_text(json.dumps({"meta": {}, "rows": rows}))
    result = compile_floor.main(["--smoke", "--real", str(real), "--out", str(tmp_path)])

    groups = {p["group"] for p in result["parts"]}
    assert groups == {"layer matmuls", "lm_head matmuls", "attention", "ours", "embedding", "other", "optimizer"}
    assert all(p["ms"] >= 0 and p["count"] >= 1 for p in result["parts"])
    summary = result["summary"]
    assert summary["floor_ms"] == sum(p["ms"] * p["count"] for p in result["parts"])
    assert summary["bar_tokens_per_s"] == 1.15 * rows[0]["tokens_per_s"]
    ours = summary["real"]["ours-compile"]
    assert ours["categories"]["gemm"] == 0.7 and ours["categories"]["ours (Triton)"] == 0.1
    assert abs(ours["idle_ms"] - (1.0 - 0.85)) < 1e-9
    md = (tmp_path / "compile_floor.md").read_text()
    assert "floor (sum)" in md and "GPU idle" in md and "bar: 1.15x hf-compile" in md
    assert json.loads((tmp_path / "compile_floor.json").read_text())["summary"]["floor_ms"] == summary["floor_ms"]


def test_bench_compile_budget_skips_rows_and_keeps_the_files(tmp_path, monkeypatch):
    """A spent ``--budget-s`` records the rows as skipped (no process started) and still writes the tables."""
    rows = "llama-tiny:hf-compile,gemma2-tiny:ours-compile"
    argv = ["bench_compile.py", "--smoke", "--budget-s", "0", "--rows", rows, "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bench_compile, "run_one", lambda *a, **k: pytest.fail("a row ran past the budget"))
    bench_compile.main()
    written = json.loads((tmp_path / "compile.json").read_text())["rows"]
    assert [(r["case"], r["variant"], r["status"]) for r in written] == [
        ("llama-tiny", "hf-compile", "skipped"),
        ("gemma2-tiny", "ours-compile", "skipped"),
    ]
    assert "skipped: --budget-s 0 spent" in (tmp_path / "compile.md").read_text()


def test_a_failed_part_is_left_out_and_named():
    parts = [
        dict(part="q_proj fwd", group="layer matmuls", count=2, ms=1.0, work=4e9, unit="flop", method="graph"),
        dict(part="RoPE fwd+bwd", group="ours", count=2, ms=float("nan"), work=1e9, unit="byte", method="failed: X"),
    ]
    peak = {"tflops": 800.0, "gbps": 4000.0}
    shapes = {"N": 1000}
    summary = compile_floor.summarize(parts, peak, 2.0, {}, shapes, set())
    assert summary["floor_ms"] == 2.0 and summary["failed"] == ["RoPE fwd+bwd"]
    result = dict(meta=dict(gpu="g", date="d", case="c", dtype="bfloat16", smoke=False), peak=peak, parts=parts)
    md = compile_floor.markdown(dict(result, summary=summary, candidates=[]))
    assert "Incomplete floor**: these parts failed and are left out: RoPE fwd+bwd" in md
