"""Comparison tables from pytest-benchmark JSON files, for the terminal and for the README.

    python bench/readme_tables.py                     # the newest saved run of each device
    python bench/readme_tables.py FILE.json ...       # these files (--benchmark-json or saved)
    python bench/readme_tables.py --readme [FILE...]  # rewrites README.md between the markers

One table per group: each provider's median (CUDA events on a GPU, with the host time of the
same calls beside it), its speed-up over the group's baseline (baseline median / median: above
1 is faster), its peak extra memory and the suite's own columns; cases that did not run are
listed as "not measured" with the reason. ``pytest --benchmark`` prints the same tables at
the end of the session (bench/_plugin.py). Saved runs live in bench/results/<device>/ (one
folder per device, pytest-benchmark's storage layout below it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# extra_info keys the tables read themselves; any other scalar is shown only for files that
# predate bench/_harness.py (they have no "timer" and no "columns").
_OWN_KEYS = {"group", "provider", "baseline", "shape", "device", "timer", "columns"}
_OWN_KEYS |= {"median_ms", "host_median_ms", "peak_extra_MB"}


@dataclass
class Row:
    provider: str
    median_s: float | None = None
    host_s: float | None = None
    peak_mb: float | None = None
    columns: dict[str, str] = field(default_factory=dict)
    saved_s: float | None = None
    reason: str = ""


@dataclass
class Table:
    group: str
    baseline: str | None
    shapes: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def title(self, known_device: str | None = None) -> str:
        """The group, its shape and its device (unless it is ``known_device``)."""
        devices = [d for d in self.devices if d != known_device]
        return " · ".join([self.group, *self.shapes, *devices])


def median_seconds(bench: dict) -> float:
    """The figure a table shows: the CUDA-event median when there is one, else the host's."""
    extra = bench.get("extra_info", {})
    if extra.get("median_ms") is not None:
        return extra["median_ms"] / 1e3
    return bench["stats"]["median"]


def tables(
    benchmarks: Iterable[dict],
    not_measured: Iterable[dict] = (),
    saved: dict[str, dict] | None = None,
) -> list[Table]:
    """Groups benchmark records (pytest-benchmark's JSON form) into tables, in run order.
    ``saved`` maps a fullname to the record it is compared with (``--benchmark-compare``)."""
    by_group: dict[str, Table] = {}

    def table_for(info: dict, fallback_group: str) -> Table:
        group = info.get("group") or fallback_group
        table = by_group.setdefault(group, Table(group, info.get("baseline")))
        for key, values in (("shape", table.shapes), ("device", table.devices)):
            value = info.get(key)
            if value and str(value) not in values:
                values.append(str(value))
        return table

    for bench in benchmarks:
        extra = bench.get("extra_info", {})
        table = table_for(extra, bench.get("group") or bench["name"].split("[")[0])
        row = Row(extra.get("provider") or str(bench.get("param") or bench["name"]))
        row.median_s = median_seconds(bench)
        if extra.get("timer") == "cuda-events":
            row.host_s = bench["stats"]["median"]
        row.peak_mb = extra.get("peak_extra_MB")
        row.columns = dict(extra.get("columns") or _legacy_columns(extra))
        if saved and bench.get("fullname") in saved:
            row.saved_s = median_seconds(saved[bench["fullname"]])
        table.rows.append(row)
    for case in not_measured:
        table_for(case, case.get("group", "?")).rows.append(
            Row(case.get("provider", "?"), reason=case.get("reason", "not measured"))
        )
    return list(by_group.values())


def _legacy_columns(extra: dict) -> dict[str, str]:
    if "timer" in extra:
        return {}
    return {
        k: f"{v:.4g}" if isinstance(v, float) else str(v)
        for k, v in extra.items()
        if k not in _OWN_KEYS and isinstance(v, str | int | float | bool)
    }


def _header_and_cells(table: Table) -> tuple[list[str], list[list[str]]]:
    base = next((r for r in table.rows if r.provider == table.baseline and r.median_s), None)
    has = {
        "host": any(r.host_s is not None for r in table.rows),
        "peak": any(r.peak_mb is not None for r in table.rows),
        "saved": any(r.saved_s is not None for r in table.rows),
    }
    extra_names = list(dict.fromkeys(k for r in table.rows for k in r.columns))
    header = ["provider", "median"] + ["host"] * has["host"]
    header += [f"speed-up vs {table.baseline}"] * (base is not None)
    header += ["peak extra"] * has["peak"] + extra_names + ["vs saved run"] * has["saved"]
    cells = []
    for r in table.rows:
        if r.median_s is None:
            cells.append([r.provider, f"not measured: {r.reason}"] + [""] * (len(header) - 2))
            continue
        line = [r.provider, _time(r.median_s)]
        line += [_time(r.host_s)] * has["host"]
        line += [_ratio(base.median_s / r.median_s)] if base else []
        line += [_memory(r.peak_mb)] * has["peak"]
        line += [r.columns.get(name, "-") for name in extra_names]
        line += [_ratio(r.saved_s / r.median_s) if r.saved_s else "-"] * has["saved"]
        cells.append(line)
    return header, cells


def render_text(all_tables: list[Table]) -> str:
    """Aligned plain-text tables for the terminal."""
    out = []
    for table in all_tables:
        header, cells = _header_and_cells(table)
        measured = [header, *(c for c in cells if not c[1].startswith("not measured"))]
        widths = [max(len(c[i]) for c in measured) for i in range(len(header))]
        widths[0] = max(len(c[0]) for c in [header, *cells])
        out.append(table.title())
        for line in [header, *cells]:
            if line is not header and line[1].startswith("not measured"):
                out.append(f"  {line[0]:<{widths[0]}}  {line[1]}")
            else:
                out.append(
                    "  "
                    + "  ".join(f"{c:<{w}}" for c, w in zip(line, widths, strict=True)).rstrip()
                )
        out.append("")
    return "\n".join(out)


def render_markdown(all_tables: list[Table], known_device: str | None = None) -> str:
    """Markdown tables under #### headings; ``known_device`` (the run's, in the heading above
    them) is left out of the titles."""
    out = []
    for table in all_tables:
        header, cells = _header_and_cells(table)
        out += [f"#### {table.title(known_device)}", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(c or "" for c in line) + " |" for line in cells]
        out.append("")
    return "\n".join(out)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{_three_digits(seconds * 1e3)} ms"
    return f"{_three_digits(seconds * 1e6)} µs"


def _three_digits(x: float) -> str:
    """Three significant digits, trailing zeros kept: 1.00, 52.2, 378."""
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}" if x else "0"


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def _memory(mb: float | None) -> str:
    if mb is None:
        return "-"
    return f"{mb:,.0f} MB" if abs(mb) >= 100 else f"{mb:.1f} MB"


def load(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if "benchmarks" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no `benchmarks`)")
    return data


def file_tables(data: dict) -> list[Table]:
    return tables(data["benchmarks"], data.get("cpc_fast", {}).get("not_measured", ()))


def newest_runs(results: Path = RESULTS) -> list[Path]:
    """The newest saved run (by its recorded time) in each device folder of ``results``."""
    runs = []
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        saved = list(folder.glob("*/[0-9][0-9][0-9][0-9]_*.json"))
        if saved:
            runs.append(max(saved, key=lambda p: (load(p).get("datetime", ""), p.name)))
    return runs


def run_heading(path: Path, data: dict) -> list[str]:
    """Where, when and how a file was measured."""
    run = data.get("cpc_fast", {})
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    versions = ", ".join(
        f"{name} {machine[name]}"
        for name in ("torch", "triton", "cuda", "transformers", "cpc_fast")
        if machine.get(name)
    )
    dirty = " (uncommitted changes)" if commit.get("dirty") else ""
    try:
        shown = path.resolve().relative_to(BENCH.parent)
    except ValueError:
        shown = path.name
    gpu = machine.get("gpu", "none")
    cpu = f"{machine.get('cpu_model') or machine.get('cpu', '?')}"
    cores = machine.get("cpu_cores") or machine.get("cpu_count", "?")
    return [
        f"### {machine.get('device') or (gpu if gpu != 'none' else f'CPU: {cpu}')}",
        "",
        f"- command: `{run.get('command') or machine.get('command', '?')}`",
        f"- run at {data.get('datetime', '?')}, commit {str(commit.get('id', '?'))[:12]}{dirty}",
        f"- {versions}; CPU: {cpu}, {cores} cores; results: [`{shown}`]({shown})",
        "",
    ]


def readme_block(paths: list[Path]) -> str:
    """The README's generated part: each run's heading and tables, and a plain statement
    when no GPU run is among them."""
    runs = [(p, load(p)) for p in paths]
    generated = "<!-- generated by `python bench/readme_tables.py --readme`: do not edit -->"
    lines = [START, generated, ""]
    if not any(d.get("machine_info", {}).get("gpu", "none") != "none" for _, d in runs):
        lines += [
            "**GPU: not measured.** No GPU run is saved under `bench/results/` yet; "
            "`bash bench/gpu_check.sh OUT_DIR` on a CUDA machine makes one. Estimates for "
            "the fused kernels (not measurements) are in "
            "[`kernels/README.md`](kernels/README.md).",
            "",
        ]
    if not runs:
        lines += ["No benchmark run is saved yet: `pytest --benchmark` makes one.", ""]
    for path, data in runs:
        lines += run_heading(path, data)
        lines.append(render_markdown(file_tables(data), data.get("machine_info", {}).get("device")))
    lines.append(END)
    return "\n".join(lines)


def update_readme(block: str, readme: Path = README) -> None:
    text = readme.read_text()
    if text.count(START) != 1 or text.count(END) != 1:
        raise SystemExit(f"{readme} must hold one {START} and one {END} line")
    head, rest = text.split(START)
    tail = rest.split(END)[1]
    readme.write_text(head + block + tail)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="default: newest run per device")
    parser.add_argument("--readme", action="store_true", help=f"rewrite {README.name}")
    args = parser.parse_args(argv)
    paths = args.files or newest_runs()
    if args.readme:
        update_readme(readme_block(paths))
        print(f"updated {README} from {len(paths)} file(s)")
        return
    for path in paths:
        data = load(path)
        print("\n".join(run_heading(path, data)))
        print(render_markdown(file_tables(data), data.get("machine_info", {}).get("device")))
    if not paths:
        sys.exit("no saved run under bench/results/: `pytest --benchmark` makes one")


if __name__ == "__main__":
    main()
