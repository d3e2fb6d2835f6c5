"""Writes the markdown table of bench_batching.py from its pytest-benchmark JSON.

    python bench/batching_table.py bench/results/batching-cpu.json [-o OUTPUT.md]

Medians in ms, output GB/s (output bytes / median), cpp's speed-up over numpy and torch, and
cpp's throughput as a share of np.copyto's, plus the machine and the command that ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

COMMAND = (
    "pytest bench/bench_batching.py --benchmark-json=bench/results/batching-cpu.json && "
    "python bench/batching_table.py bench/results/batching-cpu.json"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine(data: dict) -> list[str]:
    info = data.get("machine_info", {})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = data.get("commit_info", {}).get("id", "unknown")
    return [
        f"- CPU: {cpu_model()}, {cores} cores available",
        f"- Python {info.get('python_version', platform.python_version())}, "
        f"{_versions()}, commit {commit[:12]}",
        f"- run at {data.get('datetime', 'unknown')}",
    ]


def _versions() -> str:
    import numpy
    import torch

    import cpc_fast

    return f"numpy {numpy.__version__}, torch {torch.__version__}, cpc-fast {cpc_fast.__version__}"


def render(data: dict) -> str:
    """The markdown document for one pytest-benchmark JSON report."""
    rows: dict[tuple, dict[str, tuple[float, float]]] = defaultdict(dict)
    copyto: dict[int, tuple[float, float]] = {}
    for bench in data["benchmarks"]:
        extra = bench["extra_info"]
        median = bench["stats"]["median"]
        entry = (median * 1e3, extra["output_GBps"])
        if extra["provider"] == "copyto":
            copyto[extra["batch"]] = entry
        else:
            key = (extra["batch"], extra["dtype"], extra["output"])
            rows[key][extra["provider"]] = entry

    lines = [
        "# Waveform batching on the CPU: (B, 160000) float32 from utterances of 2-20 s",
        "",
        "Median ms (output GB/s). `new`: a new batch per call; `out`: written into a "
        "preallocated buffer. `vs copyto`: cpp's GB/s as a share of `np.copyto` of the same "
        "output size (its own row). torch runs on one intra-op thread, as in a DataLoader "
        "worker; cpp uses the cores available.",
        "",
        "| B | input | output | cpp | numpy | torch | cpp vs numpy | cpp vs torch | vs copyto |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for batch, dtype, output in sorted(rows, key=lambda k: (k[0], k[1] != "float32", k[2])):
        got = rows[batch, dtype, output]
        cells = [
            f"{got[p][0]:.2f} ({got[p][1]:.1f})" if p in got else "-"
            for p in ("cpp", "numpy", "torch")
        ]
        speedups = [
            f"{got[p][0] / got['cpp'][0]:.1f}x" if p in got and "cpp" in got else "-"
            for p in ("numpy", "torch")
        ]
        share = (
            f"{got['cpp'][1] / copyto[batch][1]:.0%}" if "cpp" in got and batch in copyto else "-"
        )
        lines.append(f"| {batch} | {dtype} | {output} | {' | '.join(cells + speedups)} | {share} |")
    for batch, (ms, gbps) in sorted(copyto.items()):
        lines.append(f"| {batch} | copyto | out | {ms:.2f} ({gbps:.1f}) | | | | | 100% |")
    lines += ["", *_machine(data), f"- command: `{COMMAND}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("-o", "--output", type=Path, help="default: the JSON path with .md")
    args = parser.parse_args()
    output = args.output or args.json.with_suffix(".md")
    output.write_text(render(json.loads(args.json.read_text())))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
