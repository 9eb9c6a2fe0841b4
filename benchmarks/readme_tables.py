"""Refresh the README's benchmark tables from the committed results (no GPU needed):

    python benchmarks/readme_tables.py [benchmarks/results/h200]

Rewrites what lies between ``<!-- results:begin -->`` / ``<!-- results:end -->`` (anchor shapes:
do_bench and CUDA-graph tables, from results.json) and ``<!-- e2e:begin -->`` /
``<!-- e2e:end -->`` (the end-to-end table and its note, from e2e.md). The prose around them is
written by hand.
"""

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(\n<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body.strip() + m.group(2), text)


def main(folder: Path) -> None:
    res = json.loads((folder / "results.json").read_text())
    tables = report.summary_markdown(res) + "\n\n" + report.graph_summary_markdown(res)
    text = replace_block(README.read_text(), "results", tables.replace("## ", "### "))
    if (folder / "e2e.md").exists():  # else the README keeps the end-to-end table it has (with its GPU)
        e2e_lines = (folder / "e2e.md").read_text().strip().splitlines()
        text = replace_block(text, "e2e", "\n".join(line for line in e2e_lines if not line.startswith("# ")))
    README.write_text(text)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "h200"))
