"""Session 12: what is alive at the peak of a training step (issue 13's Gemma 3 memory goal, ours 96%
of Liger 0.8.5's peak, goal 90%). Runs e2e.py's worker for CASE PROVIDER (one warm-up, one timed
step) under CUDA memory-history recording, replays the allocator trace to the moment of the peak
and prints the live blocks grouped by the innermost frame in transformers, liger_kernel or torch's
optimizer (allocation sizes as requested, MiB).

    python scripts/gpu/mem12.py gemma3-4b-2x2048 ours     # the liger085 run needs e2e's PYTHONPATH
"""

import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import e2e  # noqa: E402
import torch  # noqa: E402

KEEP = ("liger_kernel", "transformers/models", "transformers/loss", "torch/optim", "torch/autograd", "e2e.py")


def site(frames) -> str:
    for f in frames:
        name = f.get("filename", "")
        if any(k in name for k in KEEP):
            return f"{name.split('site-packages/')[-1].split('/work/')[-1]}:{f.get('line')} {f.get('name')}"
    return "other: " + (f"{frames[0].get('filename', '')}:{frames[0].get('name', '')}" if frames else "?")


def peak_live(trace):
    live, total, best, best_live, best_i = {}, 0, -1, {}, 0
    for i, e in enumerate(trace):
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], e.get("frames", []))
            total += e["size"]
            if total > best:
                best, best_live, best_i = total, dict(live), i
        elif e["action"] in ("free_requested", "free_completed") and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    return best, best_live, best_i


def main(case, provider):
    torch.cuda.memory._record_memory_history(max_entries=400_000, stacks="python")
    r = e2e.worker(case, provider, smoke=False, warmup=1, steps=1)
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snap["device_traces"][0]
    best, live, at = peak_live(trace)
    print(f"{case} {provider}: peak_gib {r.get('peak_gib', 0):.3f} (max_memory_allocated); replayed peak "
          f"{best / 2**30:.3f} GiB at event {at} of {len(trace)} (allocations before recording not counted)")
    groups = collections.Counter()
    counts = collections.Counter()
    for size, frames in live.values():
        key = site(frames)
        groups[key] += size
        counts[key] += 1
    for key, size in groups.most_common(40):
        print(f"  {size / 2**20:9.1f} MiB  {counts[key]:4d}x  {key}")
    # What the step allocated around the peak: the 30 events before it (what pushed it up).
    print("  events before the peak:")
    for e in trace[max(0, at - 30) : at + 1]:
        print(f"    {e['action']:<15} {e['size'] / 2**20:9.1f} MiB  {site(e.get('frames', []))}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
