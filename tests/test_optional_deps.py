"""``need()``: a missing extra skips a test, except where CI requires every extra; a broken
one is an error everywhere; and CI fails a run in which no Hugging Face parity test passed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CASES = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from optional_deps import need

def test_missing():
    need("cpc_fast_no_such_package")

def test_broken():
    need("cpc_fast_broken_package")
"""


def _run(tmp_path: Path, require: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "cpc_fast_broken_package.py").write_text("import cpc_fast_no_such_dependency\n")
    env = {**os.environ, "CPC_FAST_REQUIRE_EXTRAS": require, "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", str(tmp_path)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("require", "counts"), [("0", "1 failed, 1 skipped"), ("1", "2 failed")])
def test_a_missing_extra_skips_unless_every_extra_is_required(tmp_path, require, counts):
    out = _run(tmp_path, require).stdout
    assert f" {counts} in " in out.splitlines()[-1]
    assert "FAILED test_cases.py::test_broken" in out  # a broken install is never a skip
    assert "No module named 'cpc_fast_no_such_dependency'" in out


def _whole_run(tmp_path: Path, test_code: str, *args: str) -> subprocess.CompletedProcess:
    """``pytest`` (no paths) in a project laid out as this one, with this suite's conftest."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\nmarkers = ["huggingface: parity"]\n'
    )
    for name in ("conftest.py", "optional_deps.py"):
        shutil.copy(TESTS / name, tmp_path / "tests" / name)
    (tmp_path / "tests" / "test_some.py").write_text(test_code)
    env = {**os.environ, "CPC_FAST_REQUIRE_EXTRAS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


PLAIN = "def test_plain():\n    pass\n"
PARITY = "import pytest\n@pytest.mark.huggingface\ndef test_parity():\n    pass\n"


def test_a_whole_required_run_without_a_hugging_face_parity_test_fails(tmp_path):
    done = _whole_run(tmp_path, PLAIN)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "Hugging Face parity tests passed: 0 (CPC_FAST_REQUIRE_EXTRAS=1" in done.stdout
    assert "1 passed" in done.stdout.splitlines()[-1]


def test_a_whole_required_run_counts_its_parity_tests(tmp_path):
    done = _whole_run(tmp_path, PLAIN + PARITY)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "Hugging Face parity tests passed: 1" in done.stdout


@pytest.mark.parametrize("selection", [["tests/test_some.py"], ["-k", "plain"]])
def test_a_selection_of_tests_is_not_held_to_it(tmp_path, selection):
    done = _whole_run(tmp_path, PLAIN, *selection)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "Hugging Face parity" not in done.stdout
