"""The pytest plugin behind ``pytest --benchmark``, registered by the root conftest.py whenever
a session collects bench/ (``pytest --benchmark``, ``pytest bench``, ``pytest bench/x.py``).

- Storage: pytest-benchmark saves and compares runs in ``bench/results/<device>/`` (unless
  ``--benchmark-storage`` says otherwise), so ``--benchmark-compare`` compares with the last
  run of this device; ``--benchmark`` also turns ``--benchmark-autosave`` on.
- Records: ``machine_info`` gets the device and versions; each JSON file gets a ``cpc_fast``
  entry with the exact command, the device folder and the cases that were not measured.
- Rounds: on a CPU, ``--benchmark-min-rounds`` defaults to 3 instead of 5 (a naive InfoNCE
  call takes seconds there); pytest-benchmark's other defaults stay.
- Order: the suites run training step first (what a short GPU lease must not miss).
- Length: the long suites (marker ``long``: whole experiment launches, minutes each) are left
  out unless asked for (``--benchmark-long``, ``-m long``, or the suite's file named), so
  that ``pytest --benchmark`` takes minutes; the session's wall time is printed last.
- Summary: at the end of the session, one table per group (bench/readme_tables.py) after
  pytest-benchmark's own (whose columns default to median, IQR and rounds here).
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import time
from collections import Counter
from pathlib import Path

import _harness
import pytest
import readme_tables as report
import torch
from pytest_benchmark.utils import get_tag

import cpc_fast

SUITE_ORDER = (
    "bench_train_step",
    "bench_info_nce",
    "bench_wav2vec2",
    "bench_cpc_audio",
    "bench_toolkits",
    "bench_joint_step",
    "bench_encoder",
    "bench_batching",
    "bench_predict",
    "bench_ssl",
    "bench_protocol",
)
DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's own default
CPU_MIN_ROUNDS = 3  # the CPU's slowest calls take seconds; the whole suite must fit 10 min
BENCH = Path(__file__).resolve().parent
LEFT_OUT: Counter[str] = Counter()  # the long cases this session left out, by file name
_STARTED = time.monotonic()


def configure(config: pytest.Config, benchmark_flag: bool) -> None:
    """Sets this suite's defaults before pytest-benchmark reads its options."""
    if config.option.collectonly:  # nothing will be saved: no device folder is made
        return
    if config.getoption("benchmark_storage") == DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://{report.RESULTS / _harness.device_slug()}"
    if benchmark_flag and not config.option.benchmark_autosave:
        config.option.benchmark_autosave = get_tag()  # what --benchmark-autosave stores
    if not config.getoption("benchmark_columns"):
        config.option.benchmark_columns = ["median", "iqr", "rounds"]
    if not _harness.ON_GPU and not _given(config, "--benchmark-min-rounds"):
        config.option.benchmark_min_rounds = CPU_MIN_ROUNDS


def _given(config: pytest.Config, flag: str) -> bool:
    """Whether the user set ``flag`` (command line, PYTEST_ADDOPTS or the ini's addopts)."""
    words = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
    ini = config.getini("addopts")  # a list ("args" type)
    words += ini if isinstance(ini, list) else shlex.split(ini)
    return any(w == flag or w.startswith(flag + "=") for w in words)


def _machine_info() -> dict[str, object]:
    """What a result depends on and that stays the same from run to run on one machine."""
    versions = {name: _version(name) for name in ("torch", "triton", "numpy", "transformers")}
    return {
        "device": _harness.device_name(),
        "device_slug": _harness.device_slug(),
        "gpu": torch.cuda.get_device_name(0) if _harness.ON_GPU else "none",
        "cuda": torch.version.cuda if _harness.ON_GPU else None,
        "cpu_model": _harness.cpu_model(),
        "cpu_cores": _harness.cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        **versions,
        "cpc_fast": cpc_fast.__version__,
    }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def command(config: pytest.Config) -> str:
    return shlex.join(["pytest", *config.invocation_params.args])


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info.update(_machine_info())


def pytest_benchmark_update_json(config: pytest.Config, output_json: dict) -> None:
    output_json["cpc_fast"] = {
        "command": command(config),
        "device": _harness.device_slug(),
        "not_measured": list(_harness.NOT_MEASURED),
    }


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session):
    """Before pytest-benchmark saves: drops a case stopped inside its rounds (SIGINT at the
    GPU check's time limit), whose empty statistics would keep it from writing any JSON."""
    finished = getattr(getattr(session.config, "_benchmarksession", None), "benchmarks", None)
    if finished:
        finished[:] = [b for b in finished if b.stats.data]
    yield


def pytest_runtest_teardown(item: pytest.Item) -> None:
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    if fixture is not None and getattr(fixture, "stats", None) is not None:
        _harness.log_partial(benchmark=fixture.stats.as_dict(include_data=False))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = Path(str(item.path)).resolve()
        if BENCH not in path.parents:
            return -1
        return SUITE_ORDER.index(path.stem) if path.stem in SUITE_ORDER else len(SUITE_ORDER)

    items.sort(key=rank)
    left_out = [item for item in items if _left_out(config, item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]
        LEFT_OUT.update(Path(str(item.path)).name for item in left_out)  # counts the cases


def _left_out(config: pytest.Config, item: pytest.Item) -> bool:
    """A case of a long suite (marker ``long``) that the user did not ask for: not with
    ``--benchmark-long``, not selected by a ``-m`` expression, not named by its file."""
    if item.get_closest_marker("long") is None:
        return False
    if config.getoption("benchmark_long") or config.option.markexpr:
        return False
    path = Path(str(item.path)).resolve()
    named = (config.invocation_params.dir / a.split("::")[0] for a in config.args)
    return path not in {p.resolve() for p in named}


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled:  # --benchmark-disable: nothing was timed
        return
    finished = session.benchmarks
    records = [b.as_dict(include_data=False) for b in finished if not b.has_error]
    if not records and not _harness.NOT_MEASURED:
        return
    saved: dict[str, dict] = {}
    for mapping in (getattr(session, "compared_mapping", None) or {}).values():
        saved.update(mapping)
    found = report.tables(records, _harness.NOT_MEASURED, saved)
    terminalreporter.write_sep("=", "cpc-fast benchmarks: one table per group")
    terminalreporter.write_line(
        "median: CUDA events on the GPU (host: the host clock around the same synchronised "
        "calls), the host clock on the CPU; speed-up: baseline median / median; vs saved "
        "run: that run's median / this one"
    )
    terminalreporter.write_line("")
    terminalreporter.write(report.render_text(found))
    _write_wall_time(terminalreporter)


def _write_wall_time(terminalreporter) -> None:
    """The session's wall time, and the long suites it left out (how to run them)."""
    minutes, seconds = divmod(round(time.monotonic() - _STARTED), 60)
    line = f"benchmark run: {minutes} min {seconds:02d} s wall time"
    if LEFT_OUT:
        line += (
            "; long cases left out: "
            + ", ".join(f"{name} ({count})" for name, count in sorted(LEFT_OUT.items()))
            + " "
            "(pytest --benchmark --benchmark-long runs them too)"
        )
    terminalreporter.write_line("")
    terminalreporter.write_line(line)
