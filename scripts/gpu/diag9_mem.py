"""Where the peak memory of one e2e training case goes (session 9 diagnosis of issue 13's Gemma 3 memory).

    PYTHONPATH=src python scripts/gpu/diag9_mem.py gemma3-4b-2x2048 ours
    PYTHONPATH=.peer/liger085:benchmarks python scripts/gpu/diag9_mem.py gemma3-4b-2x2048 liger085

Records the allocator's trace over one warm-up and one timed step (benchmarks/e2e.py's worker),
replays it to the moment of the peak and prints the live blocks grouped by the innermost frame
in liger_kernel / transformers / the benchmark (bytes, count, the three frames below).
"""

import collections
import sys

import torch

sys.path.insert(0, "benchmarks")
import e2e  # noqa: E402

case, provider = sys.argv[1], sys.argv[2]
torch.cuda.memory._record_memory_history(max_entries=3_000_000, stacks="python")
r = e2e.worker(case, provider, False, 1, 1)
snap = torch.cuda.memory._snapshot()
torch.cuda.memory._record_memory_history(enabled=None)
print({k: r.get(k) for k in ("status", "peak_gib", "tokens_per_s")})
live, total, peak, at_peak = {}, 0, 0, {}
for ev in snap["device_traces"][0]:
    if ev["action"] == "alloc":
        live[ev["addr"]] = (ev["size"], ev.get("frames", []))
        total += ev["size"]
        if total > peak:
            peak, at_peak = total, dict(live)
    elif ev["action"] == "free_completed" and ev["addr"] in live:
        total -= live.pop(ev["addr"])[0]
print(f"peak of the traced allocations: {peak / 2**30:.3f} GiB (the trace may start after the weights)")


def key(frames):
    places = ("liger_kernel", "transformers/", "e2e.py", "torch/optim")
    own = [f for f in frames if any(s in f["filename"] for s in places)]
    picked = own[:3] if own else frames[:3]
    return " <- ".join(f"{f['filename'].split('/')[-1]}:{f['line']}:{f['name']}" for f in picked)


groups = collections.defaultdict(lambda: [0, 0])
for size, frames in at_peak.values():
    g = groups[key(frames)]
    g[0] += size
    g[1] += 1
for k, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:30]:
    print(f"{size / 2**20:10.1f} MiB {count:6d}  {k}")
