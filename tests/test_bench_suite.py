"""The benchmark plumbing: ``pytest --benchmark``, the comparison tables, the GPU check.

The suites themselves are not run here (they time things); a copyto case stands in for them
where a real run is needed (milliseconds).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
COPYTO = "repeat_pad and 8-float32-out-copyto"


def _pytest(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def bench_module(monkeypatch):
    """Imports a bench/ module the way the suites do (bench/ on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def test_the_bench_folder_collects_the_suites_training_step_first():
    done = _pytest("bench", "--co", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    suites = {line.split("::")[0] for line in collected}
    assert {"bench/bench_info_nce.py", "bench/bench_train_step.py"} <= suites, suites
    assert collected[0].startswith("bench/bench_train_step.py")  # the GPU check needs it first


def _collected_suites(*args: str) -> set[str]:
    done = _pytest(*args, "--co", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    return {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}


def test_the_default_benchmark_run_leaves_the_long_suites_out():
    """`pytest --benchmark` stays minutes long: the suites marked `long` (whole experiment
    launches) run only when asked for."""
    default = _collected_suites("--benchmark")
    assert "bench/bench_protocol.py" not in default
    assert {"bench/bench_train_step.py", "bench/bench_info_nce.py"} <= default
    long = {"bench/bench_protocol.py"}
    assert _collected_suites("--benchmark", "--benchmark-long") == default | long
    assert _collected_suites("--benchmark", "-m", "long") == long
    assert _collected_suites("--benchmark", "bench/bench_protocol.py") == long


def test_every_suite_that_launches_an_experiment_is_marked_long():
    """A suite that starts whole `cpc-fast experiment` launches takes minutes per case."""
    for path in sorted(BENCH.glob("bench_*.py")):
        text = path.read_text()
        if '"experiment"' in text and "subprocess" in text:
            assert "pytestmark = pytest.mark.long" in text, path.name


@pytest.mark.parametrize(("args", "root"), [([], "tests"), (["--benchmark"], "bench")])
def test_plain_pytest_runs_tests_and_the_benchmark_option_runs_bench(tmp_path, args, root):
    # A plugin that prints what the session would collect, then stops before collecting.
    (tmp_path / "print_roots.py").write_text(
        "import pytest\n"
        "def pytest_collection(session):\n"
        "    print('ROOTS', session.config.args)\n"
        "    pytest.exit('printed', returncode=0)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "print_roots", *args]
    cmd.append(f"--benchmark-storage=file://{tmp_path / 'storage'}")  # not bench/results
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("ROOTS")]
    roots = [Path(r).name for r in ast.literal_eval(line.removeprefix("ROOTS "))]
    assert roots == [root], done.stdout + done.stderr


def test_a_run_saves_device_versions_and_command_and_compares(tmp_path):
    storage = f"--benchmark-storage=file://{tmp_path / 'storage'}"
    fast = ["--benchmark-max-time=0.001", "--benchmark-min-rounds=1"]
    out = tmp_path / "run.json"
    first = _pytest("--benchmark", "-k", COPYTO, storage, f"--benchmark-json={out}", *fast)
    assert first.returncode == 0, first.stdout + first.stderr
    data = json.loads(out.read_text())
    assert data["machine_info"]["device"] and data["machine_info"]["torch"]
    assert "--benchmark" in data["cpc_fast"]["command"]
    (bench,) = data["benchmarks"]
    assert bench["extra_info"]["provider"] == "copyto" and bench["extra_info"]["timer"]
    assert len(list((tmp_path / "storage").glob("*/0001_*.json"))) == 1  # autosaved
    assert "cpc-fast benchmarks" in first.stdout and "copyto" in first.stdout

    second = _pytest("--benchmark", "-k", COPYTO, storage, "--benchmark-compare", *fast)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "vs saved run" in second.stdout
    assert len(list((tmp_path / "storage").glob("*/000[12]_*.json"))) == 2


def _record(provider, median_ms, peak=None, columns=None, group="g", baseline="base"):
    extra = {"group": group, "provider": provider, "baseline": baseline, "shape": "B=1"}
    extra.update(device="dev", timer="host", median_ms=median_ms, peak_extra_MB=peak)
    if columns:
        extra["columns"] = columns
    return {"name": f"test[{provider}]", "fullname": f"t::test[{provider}]", "group": group,
            "extra_info": extra, "stats": {"median": median_ms / 1e3}}  # fmt: skip


def test_report_renders_one_table_per_group_with_ratios_memory_and_gaps(bench_module):
    report = bench_module("readme_tables")
    records = [
        _record("base", 4.0, peak=1536.0, columns={"GB/s": "1.0"}),
        _record("fast", 1.0, peak=12.25),
        _record("other", 2.0, group="h", baseline="missing"),
    ]
    skipped = [{"group": "g", "provider": "gpu-only", "reason": "needs a CUDA device"}]
    tables = report.tables(records, skipped)
    assert [t.group for t in tables] == ["g", "h"]
    text = report.render_text(tables)
    assert "speed-up vs base" in text and "4.00x" in text and "1.00x" in text
    assert "1,536 MB" in text and "12.2 MB" in text
    assert "gpu-only" in text and "not measured: needs a CUDA device" in text
    assert "speed-up vs missing" not in text  # no baseline row measured: no ratio column
    markdown = report.render_markdown(tables)
    assert "| fast | 1.00 ms | 4.00x | 12.2 MB | - |" in markdown


def test_the_tables_are_generated_between_the_markers(bench_module, tmp_path):
    report = bench_module("readme_tables")
    assert report.PAGE.read_text().count(report.START) == 1
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"benchmarks": [_record("base", 3.0)], "machine_info": {}}))
    page = tmp_path / "benchmarks.md"
    page.write_text(f"head\n{report.START}\nold\n{report.END}\ntail\n")
    report.update_between(page, report.tables_block([run]))
    text = page.read_text()
    assert text.startswith("head\n") and text.endswith("tail\n") and "old" not in text
    assert "| base | 3.00 ms |" in text
    assert "GPU: not measured" in text  # no GPU run among the inputs


def test_the_readme_s_headline_rows_are_generated_between_their_markers(bench_module, tmp_path):
    report = bench_module("readme_tables")
    assert (ROOT / "README.md").read_text().count(report.HEADLINE_START) == 1
    group, provider = report.HEADLINES[2]
    records = [
        _record("base", 3.0, peak=200.0, group=group),
        _record(provider, 1.5, peak=50.0, group=group),
        _record("other", 1.0, group="not a headline"),
    ]
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"benchmarks": records, "machine_info": {"device": "dev"}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{report.HEADLINE_START}\nold\n{report.HEADLINE_END}\ntail\n")
    block = report.headline_block([run])
    report.update_between(readme, block, report.HEADLINE_START, report.HEADLINE_END)
    text = readme.read_text()
    assert text.startswith("head\n") and text.endswith("tail\n") and "old" not in text
    assert f"| base: 3.00 ms | {provider}: 1.50 ms | **2.00x** | 200 MB → 50.0 MB | dev," in text
    assert "not a headline" not in text and "GPU: not measured" in text
    with pytest.raises(SystemExit, match="must hold one"):
        report.update_between(readme, block)  # the tables' markers are not in the README


def test_fused_cases_are_not_timed_in_the_interpreter(bench_module, monkeypatch):
    harness = bench_module("_harness")
    monkeypatch.setattr(harness, "fused_status", lambda: (True, "ok"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "interpreter" in harness.fused_unavailable()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert harness.fused_unavailable() is None


def test_gpu_check_without_cuda_says_so_and_brings_back_few_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 1 <= len(files) <= 8, files
    summary = (out / "summary.md").read_text()
    assert "no CUDA device" in summary and "nothing was measured" in summary
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        assert "preflight.json" in tar.getnames()
