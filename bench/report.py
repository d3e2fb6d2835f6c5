"""Markdown tables from pytest-benchmark JSON files: ``python bench/report.py FILE_OR_DIR...``.

One table per file, headed by the machine (GPU/CPU name, torch/triton versions) and the exact
command recorded by bench/conftest.py; one row per benchmark with its median and minimum
time and every ``extra_info`` field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    m = data.get("machine_info", {})
    lines = [
        f"### {path.name}",
        "",
        f"device: {m.get('gpu', 'none')} | cpu: {m.get('cpu', '?')} x{m.get('cpu_count', '?')}"
        f" | torch {m.get('torch', '?')} | triton {m.get('triton', '?')}"
        f" | {data.get('datetime', '')}",
        f"command: `{m.get('command', '?')}`",
        "",
    ]
    benches = data.get("benchmarks", [])
    extra_keys = sorted({k for b in benches for k in b.get("extra_info", {})} - {"shape"})
    lines.append("| benchmark | median ms | min ms | " + " | ".join(extra_keys) + " |")
    lines.append("|---" * (3 + len(extra_keys)) + "|")
    for b in benches:
        s, extra = b["stats"], b.get("extra_info", {})
        cells = [b["name"], f"{s['median'] * 1e3:.3f}", f"{s['min'] * 1e3:.3f}"]
        cells += [str(extra.get(k, "")) for k in extra_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args: list[str]) -> None:
    paths: list[Path] = []
    for a in args:
        p = Path(a)
        paths += sorted(p.glob("*.json")) if p.is_dir() else [p]
    for p in paths:
        try:
            print(table(p))
        except (KeyError, ValueError) as exc:  # not a pytest-benchmark file
            print(f"### {p.name}\n\n(not a benchmark file: {exc})\n")


if __name__ == "__main__":
    main(sys.argv[1:])
