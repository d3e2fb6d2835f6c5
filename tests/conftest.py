"""Shared test setup.

Triton kernels run on the CPU through Triton's interpreter. ``TRITON_INTERPRET`` must be set
before triton is first imported, so it is set here, at collection time, unless a CUDA device
is present (then the ``cuda``-marked tests exercise the real compiler) or the caller chose.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# Prepared corpora go to a folder of this session (subprocesses inherit it), never to the
# user's cache.
_CACHE = os.environ["CPC_FAST_CACHE"] = tempfile.mkdtemp(prefix="cpc-fast-test-cache-")

import pytest  # noqa: E402
from optional_deps import REQUIRE_EXTRAS, need  # noqa: E402

# The parity tests against the real transformers package that passed (marker "huggingface").
_huggingface_passed: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run bench/gpu_check.sh on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """Tiny ops on a shared 2-core CPU: one intra-op thread avoids OpenMP oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def transformers():
    """Hugging Face transformers (the ``ssl`` extra), or the test skips (fails in CI)."""
    return need("transformers")


@pytest.fixture(scope="session")
def two_process_runs(tmp_path_factory):
    """One pair of gloo processes runs the two-process preemption points and the reference
    of the runs in subprocesses (tests/preemption_harness.py): (its folder, the records)."""
    from preemption_harness import STEPS, random_points, two_process_runs

    folder = tmp_path_factory.mktemp("two-processes")
    # The ranks stop one step after the signal (StopVote): the last point is a step earlier.
    points = random_points(seed=31, count=12, last=STEPS - 2, ranks=2)
    return folder, two_process_runs(folder, points), points


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "huggingface" in report.keywords:
        _huggingface_passed.append(report.nodeid)


def _parity_required(config: pytest.Config) -> bool:
    """CI's whole run: every extra required, and ``pytest`` with no paths, selection or
    benchmark option (a run of a few tests or of bench/ has no parity test to lose)."""
    whole = (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and config.args == config.getini("testpaths")
        and not (config.option.keyword or config.option.markexpr or config.option.deselect)
    )
    return REQUIRE_EXTRAS and whole


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI's whole run, no Hugging Face parity test passing means they were lost (a broken
    install, a renamed test file): the run fails."""
    required = _parity_required(session.config)
    if required and not _huggingface_passed and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    required = _parity_required(config)
    if not (required or _huggingface_passed):
        return
    line = f"Hugging Face parity tests passed: {len(_huggingface_passed)}"
    if required and not _huggingface_passed:
        line += " (CPC_FAST_REQUIRE_EXTRAS=1 requires at least one: failing the run)"
    terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)
