"""Repository-wide pytest set-up: ``pytest --benchmark`` runs the benchmark suites in bench/.

``pytest`` alone runs tests/ (``testpaths``). The suites (bench/bench_*.py) are collected
only when asked for: ``pytest --benchmark`` (every suite but the long ones, the run saved
under bench/results/<device>/; minutes on a CPU), ``pytest bench`` or
``pytest bench/bench_info_nce.py``. The long suites (marker ``long``: the experiment
protocol, whole launches of minutes each) run with ``--benchmark-long``, or when named
(``pytest --benchmark bench/bench_protocol.py``), or selected with ``-m long``.
pytest-benchmark's options work as usual, e.g. ``pytest --benchmark -k "philox and bf16"
--benchmark-compare`` or ``pytest --benchmark --benchmark-json=out.json``. A session that
collects bench/ loads bench/_plugin.py (device-folder storage, records, the tables).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
BENCH = ROOT / "bench"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        help="run the benchmark suites in bench/ (instead of tests/ when no path is given) "
        "and save the run under bench/results/<device>/",
    )
    parser.addoption(
        "--benchmark-long",
        action="store_true",
        help="also run the long benchmark suites (marker `long`: whole experiment launches, "
        "minutes per case), which a plain `pytest --benchmark` leaves out",
    )


def pytest_configure(config: pytest.Config) -> None:
    flag = config.getoption("benchmark")
    if flag and config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        config.args = [str(BENCH)]
    if not (flag or any(_in_bench(config, arg) for arg in config.args)):
        return
    if not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError("the benchmarks need pytest-benchmark: pip install -e '.[dev]'")
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import _plugin  # start-up time: torch and the suites' helpers load only for benchmarks

    _plugin.configure(config, flag)
    config.pluginmanager.register(_plugin, "cpc-fast-benchmarks")


def _in_bench(config: pytest.Config, arg: str) -> bool:
    path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
    return path == BENCH or BENCH in path.parents
