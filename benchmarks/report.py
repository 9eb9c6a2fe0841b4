"""Turn ``results.json`` into ``results.md`` and one PNG per op (speed and peak memory per sweep).

python benchmarks/report.py benchmarks/results/h100     # rebuild from the JSON alone
"""

import json
import sys
from pathlib import Path

LABELS = {
    "ours": "ours",
    "ours_out": "ours (in_place=False)",
    "ours_safe": "ours (defaults: new dX)",
    "ours_fast": "ours (fast: accum bf16)",
    "liger085": "Liger 0.8.5",
    "cce": "Apple CCE 25.1.1",
    "compile": "torch.compile",
    "eager": "eager",
}
COLORS = {
    "ours": "tab:red",
    "ours_out": "tab:pink",
    "ours_safe": "tab:pink",
    "ours_fast": "tab:orange",
    "liger085": "tab:blue",
    "cce": "tab:purple",
    "compile": "tab:green",
    "eager": "tab:gray",
}
CHECK_TOL = 2e-2  # relative difference of output/gradient norms against eager that gets flagged


def _rows(entry):
    """{(case, provider): row}"""
    return {(r["case"], r["provider"]): r for r in entry["rows"]}


def _ms(r):
    return r["full_ms"][0] if r and r.get("status") == "ok" else None


def _cell_time(r):
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r["status"].upper() if r["status"] in ("oom", "skipped") else "error"
    pct = f" ({r['pct_floor']:.0f}%)" if r.get("pct_floor") else ""
    return f"{_ms(r):.3f}{pct}"


def _cell_mem(r):
    if r is None or r.get("status") != "ok" or r.get("peak_mb") is None:
        return "-"
    return f"{r['peak_mb']:.0f}" if r["peak_mb"] >= 10 else f"{r['peak_mb']:.1f}"


def _check(r, ref):
    """Largest relative difference between the norms of outputs and gradients and eager's."""
    if not r or not ref or r.get("status") != "ok" or ref.get("status") != "ok":
        return None
    a, b = r.get("norms") or [], ref.get("norms") or []
    if len(a) != len(b) or not a:
        return None
    return max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b))


def _ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _vs_liger(rs, case):
    """'time ratio, memory ratio' of ours against Liger 0.8.5 (< 1 is better for us)."""
    ours, peer = rs.get((case, "ours")), rs.get((case, "liger085"))
    t = _ratio(_ms(ours), _ms(peer))
    m = "-"
    if ours and peer and ours.get("peak_mb") is not None and peer.get("peak_mb") is not None:
        m = _ratio(ours["peak_mb"], max(peer["peak_mb"], 1e-3))
    ok = _ms(ours) is not None and _ms(peer) is not None and _ms(ours) <= _ms(peer)
    if ok and m != "-":
        ok = ours["peak_mb"] <= peer["peak_mb"] + 1
    flag = "" if t == "-" else (" ✓" if ok else " ✗")
    return f"{t}, {m}{flag}"


def _case_order(entry):
    """Cases in sweep order (each once), anchor marked."""
    seen = []
    for sw in entry["sweeps"]:
        for _, c in sw["points"]:
            if c not in seen:
                seen.append(c)
    return seen + [c for c in entry["cases"] if c not in seen]


def op_markdown(name, entry):
    rs = _rows(entry)
    provs = entry["providers"]
    m = entry["meta"]
    out = [f"## {name}: {entry['title']}", ""]
    if entry.get("notes"):
        out += [f"- {LABELS.get(k, k)}: {v}" for k, v in entry["notes"].items() if k in provs] + [""]
    out.append(f"Run {m['date']}, {m.get('elapsed_s', '?')} s. Times: fwd+bwd ms (% of floor); peak: extra MB.")
    out.append("")
    head = ["shape", "floor ms"] + [LABELS.get(p, p) for p in provs] + [f"MB {LABELS.get(p, p)}" for p in provs]
    head += ["ours / Liger (time, mem)"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in _case_order(entry):
        case = entry["cases"][c]
        shape = case["shape"] + (" (anchor)" if c == entry["anchor"] else "")
        fl = f"{case['floor_ms']:.3f}" if case.get("floor_ms") else "-"
        cells = [shape, fl] + [_cell_time(rs.get((c, p))) for p in provs] + [_cell_mem(rs.get((c, p))) for p in provs]
        cells.append(_vs_liger(rs, c) if "liger085" in provs and "ours" in provs else "-")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "<details><summary>forward, backward, spread, checks, errors</summary>", ""]
    head = [
        "shape",
        "provider",
        "fwd ms",
        "bwd ms",
        "fwd+bwd ms [p20, p80]",
        "% floor",
        "peak MB",
        "vs eager",
        "first call s",
    ]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    errors = []
    for c in _case_order(entry):
        for p in provs:
            r = rs.get((c, p))
            if r is None:
                continue
            shape = entry["cases"][c]["shape"]
            if r.get("status") != "ok":
                out.append(f"| {shape} | {LABELS.get(p, p)} | {r['status']} | | | | | | |")
                errors.append(f"- {shape} {LABELS.get(p, p)}: {r['status']}: {r.get('error', '')}")
                continue
            chk = _check(r, rs.get((c, "eager")))
            chk_s = "-" if chk is None else f"{chk:.1e}" + (" !" if chk > CHECK_TOL else "")
            if not r.get("finite", True):
                chk_s += " NaN/Inf"
            full = r["full_ms"]
            cells = [
                shape,
                LABELS.get(p, p),
                f"{r['fwd_ms'][0]:.3f}",
                f"{r['bwd_ms'][0]:.3f}",
                f"{full[0]:.3f} [{full[1]:.3f}, {full[2]:.3f}]",
                f"{r['pct_floor']:.0f}%" if r.get("pct_floor") else "-",
                _cell_mem(r),
                chk_s,
                f"{r.get('first_call_s', 0):.1f}",
            ]
            out.append("| " + " | ".join(cells) + " |")
    out += [""] + errors + ["", "</details>", ""]
    if Path(entry.get("_png", "")).name:
        out += [f"![{name}]({entry['_png']})", ""]
    return "\n".join(out)


def fmt_ceilings(c):
    if not c:
        return "not measured"
    return (
        f"device-to-device copy {c['copy_tbps']:.3g} TB/s (bytes read + written), "
        f"bf16 {c['matmul_n']}^3 matmul {c['matmul_tflops']:.3g} TFLOP/s"
    )


def _gpu(results):
    """The GPU the results were measured on (every table names it)."""
    return results.get("meta", {}).get("gpu", "GPU not recorded")


def summary_markdown(results):
    """One row per op at its anchor shape."""
    out = [
        f"## Anchor shapes, {_gpu(results)} (fwd+bwd ms, % of floor; peak extra MB)",
        "",
        "| op | shape | floor ms | ours | Liger 0.8.5 | torch.compile | eager | ours / Liger (time, mem) "
        "| MB ours | MB Liger |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results["ops"].items():
        rs, c = _rows(e), e["anchor"]
        case = e["cases"][c]
        fl = f"{case['floor_ms']:.3f}" if case.get("floor_ms") else "-"
        cells = [name, case["shape"], fl] + [
            _cell_time(rs.get((c, p))) for p in ("ours", "liger085", "compile", "eager")
        ]
        cells += [_vs_liger(rs, c), _cell_mem(rs.get((c, "ours"))), _cell_mem(rs.get((c, "liger085")))]
        out.append("| " + " | ".join(cells) + " |")
        for p in e["providers"]:
            if p not in ("ours", "liger085", "compile", "eager") and rs.get((c, p)):
                cells = [f"{name}, {LABELS.get(p, p)}", case["shape"], fl, _cell_time(rs[(c, p)]), "", "", "", ""]
                out.append("| " + " | ".join(cells + [_cell_mem(rs[(c, p)]), ""]) + " |")
    return "\n".join(out)


def _graph_cell(r, floor_ms):
    if not r or r.get("status") != "ok":
        return "-"
    if r.get("graph_ms") is None:
        return "not capturable" if r.get("graph_error") else "-"
    pct = f" ({100 * floor_ms / r['graph_ms']:.0f}%)" if floor_ms else ""
    return f"{r['graph_ms']:.3f}{pct}"


def graph_summary_markdown(results):
    """The anchors again, timed as CUDA-graph replays: the kernels' GPU time without CPU launch
    overhead, which on the lent machine's CPU is of the order of the memory-bound ops' GPU time."""
    provs = ("ours", "liger085", "compile", "eager")
    out = [
        f"## Anchor shapes, GPU time alone, {_gpu(results)} (fwd+bwd replayed from a CUDA graph; ms, % of floor)",
        "",
        "| op | shape | floor ms | " + " | ".join(LABELS.get(p, p) for p in provs) + " | ours / Liger |",
        "|---|---|---|" + "---|" * (len(provs) + 1),
    ]
    for name, e in results["ops"].items():
        rs, c = _rows(e), e["anchor"]
        case = e["cases"][c]
        fl = case.get("floor_ms")
        ours, peer = rs.get((c, "ours")), rs.get((c, "liger085"))
        ratio = "-"
        if ours and peer and ours.get("graph_ms") and peer.get("graph_ms"):
            ratio = _ratio(ours["graph_ms"], peer["graph_ms"]) + (
                " ✓" if ours["graph_ms"] <= peer["graph_ms"] else " ✗"
            )
        cells = [name, case["shape"], f"{fl:.3f}" if fl else "-"] + [_graph_cell(rs.get((c, p)), fl) for p in provs]
        out.append("| " + " | ".join(cells + [ratio]) + " |")
    return "\n".join(out)


def markdown(results):
    m = results["meta"]
    v = m.get("versions") or {}
    peers = {}
    for e in results["ops"].values():
        for g, wm in (e.get("workers") or {}).items():
            if g != "native" and wm:
                peers[g] = wm.get("lib_version")
    out = [
        f"# liger_kernel benchmarks: {m.get('gpu')}",
        "",
        f"Last run {m['date']}, size level `{m['level']}`, commit {m.get('commit')}"
        + (f" (sources {m['source_sha1']})" if m.get("source_sha1") else "")
        + "; "
        f"torch {v.get('torch')}, triton {v.get('triton')}, transformers {v.get('transformers')}, "
        f"python {v.get('python')}; peers: "
        + (", ".join(f"{g} = {ver}" for g, ver in sorted(peers.items())) or "none")
        + " (each in its own process).",
        "",
        f"Ceilings measured in the run: {fmt_ceilings(m.get('ceilings'))}.",
        "",
        f"Reproduce: `bash benchmarks/setup_peers.sh && {m['command']}`.",
        "",
        f"Timing: {m['timing']}. fwd+bwd is one forward and one backward (`torch.autograd.grad` for every "
        "input that takes a gradient). % of floor = floor time / measured time; the floor is the fewest bytes "
        "over the copy rate for memory-bound ops (norms 5 passes of X, SwiGLU/GeGLU 8 passes of one tensor, RoPE "
        "4 passes of q+k, cross-entropy 3 passes of the logits) or 6·N·H·V FLOPs over the matmul rate (fused "
        "linear cross-entropy). Peak: memory allocated during one fwd+bwd beyond what was held before "
        "(inputs and upstream gradients excluded; outputs and gradients included). "
        "'ours / Liger' < 1 is better for us; ✓ means at least as fast with no more memory. "
        "'vs eager' (details) is the largest relative difference of output and gradient norms from eager's on "
        f"the same inputs (flagged ! above {CHECK_TOL}). Ops run at different times keep their own run's ceilings "
        "and date.",
        "",
    ]
    if results["ops"]:
        out += [summary_markdown(results), "", graph_summary_markdown(results), ""]
    for name, e in results["ops"].items():
        if e["meta"].get("date") != m["date"]:
            out.append(f"(`{name}` from the run of {e['meta']['date']}: {fmt_ceilings(e['meta'].get('ceilings'))})")
            out.append("")
        out.append(op_markdown(name, e))
    if "e2e" in results:
        out.append("## End-to-end training")
        out.append("")
        try:
            import e2e

            out.append(e2e.markdown(results["e2e"]))
        except Exception:
            out.append("```\n" + json.dumps(results["e2e"], indent=1) + "\n```")
    return "\n".join(out) + "\n"


def plot(name, entry, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = _rows(entry)
    sweeps = [s for s in entry["sweeps"] if len(s["points"]) > 1] or entry["sweeps"]
    fig, axes = plt.subplots(len(sweeps), 2, figsize=(11, 3.6 * len(sweeps)), squeeze=False)
    for (ax_t, ax_m), sw in zip(axes, sweeps):
        xs = [x for x, _ in sw["points"]]
        floors = [entry["cases"][c].get("floor_ms") for _, c in sw["points"]]
        if all(floors):
            ax_t.plot(xs, floors, "k--", lw=1, label="floor")
        for p in entry["providers"]:
            pts = [(x, rs.get((c, p))) for x, c in sw["points"]]
            t = [(x, _ms(r)) for x, r in pts if _ms(r) is not None]
            # a log axis: an op that allocates nothing extra shows at 0.01 MB
            mem = [(x, max(r["peak_mb"], 0.01)) for x, r in pts if _ms(r) is not None and r.get("peak_mb") is not None]
            style = dict(marker="o", ms=4, color=COLORS.get(p), label=LABELS.get(p, p))
            if t:
                ax_t.plot(*zip(*t), **style)
            if mem:
                ax_m.plot(*zip(*mem), **style)
        for ax, ylabel in ((ax_t, "fwd+bwd ms"), (ax_m, "peak extra MB")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(sw["x_label"])
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        if not ax_m.lines:
            ax_m.text(0.5, 0.5, "not measured (CPU)", ha="center", va="center", transform=ax_m.transAxes)
        ax_t.set_title(f"speed vs {sw['name']} (lower is better)", fontsize=10)
        ax_m.set_title(f"peak memory vs {sw['name']}", fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{name}: {entry['title']}\n{entry['meta'].get('gpu')}, {entry['meta']['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out, results):
    out = Path(out)
    for name, e in results["ops"].items():
        e.pop("_png", None)
        try:
            plot(name, e, out / f"{name}.png")
            e["_png"] = f"{name}.png"
        except Exception as err:  # no matplotlib, say: the tables still get written
            print(f"report: no plot for {name}: {type(err).__name__}: {err}")
    (out / "results.md").write_text(markdown(results))
    for e in results["ops"].values():
        e.pop("_png", None)


def summary_text(results, ops):
    """A short plain-text table for the end of a run's output."""
    lines = []
    for name in ops:
        e = results["ops"][name]
        rs = _rows(e)
        provs = e["providers"]
        lines.append(f"{name}  [" + ", ".join(LABELS.get(p, p) for p in provs) + "]  MB ours/Liger  ours/Liger")
        for c in _case_order(e):
            case = e["cases"][c]
            star = "*" if c == e["anchor"] else " "
            cells = [f" {_cell_time(rs.get((c, p))):>15}" for p in provs]
            mem = f"{_cell_mem(rs.get((c, 'ours')))}/{_cell_mem(rs.get((c, 'liger085')))}"
            vs = _vs_liger(rs, c) if "liger085" in provs and "ours" in provs else ""
            g = [rs.get((c, p), {}).get("graph_ms") for p in ("ours", "liger085")]
            graph = "  graph " + "/".join("-" if t is None else f"{t:.3f}" for t in g)
            lines.append(f" {star}{case['shape'][:34]:<34}" + "".join(cells) + f"  {mem:>11}  {vs}{graph}")
    return "\n".join(lines)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    res = json.loads((folder / "results.json").read_text())
    write(folder, res)
    print(summary_text(res, list(res["ops"])))
