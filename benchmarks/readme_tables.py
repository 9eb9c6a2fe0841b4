"""Refresh the benchmark tables in README.md from benchmarks/results/h100 (run from the repo root)."""

import sys, json, re
sys.path.insert(0, 'benchmarks'); import report
res = json.load(open('benchmarks/results/h100/results.json'))
tables = report.summary_markdown(res).replace("## ", "### ") + "\n\n" + report.graph_summary_markdown(res).replace("## ", "### ")
tables += ("\n\nThe first table is `do_bench` of one forward+backward as a training step issues it; on the lent machine "
           "the CPU launch overhead (about 0.3-0.5 ms per fwd+bwd, Python and Triton's launcher) is of the order of the "
           "memory-bound ops' GPU time, so their numbers there move with the CPU. The second replays the same "
           "fwd+bwd from a CUDA graph: the kernels' own GPU time. Liger's cross-entropy syncs with the host and "
           "cannot be captured.")
e2e = "\n".join(l for l in open("benchmarks/results/h100/e2e.md").read().strip().splitlines() if not l.startswith("# ")).strip()
s = open('README.md').read()
start = s.index("## Benchmarks"); end = s.index("Reproduce (one H100")
body = s[start:end]
body = re.sub(r"BENCH_TABLES|### Anchor shapes.*?(?=\n### End-to-end)", lambda m: tables, body, flags=re.S)
body = re.sub(r"E2E_TABLE|(?<=sdpa attention\)\n\n).*?(?=\n\nReproduce|\Z)", lambda m: e2e + "\n", body, count=1, flags=re.S)
s = s[:start] + body + s[end:]
open('README.md', 'w').write(s)
