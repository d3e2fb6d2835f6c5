"""One command for a lent GPU: the CUDA tests, then ``pytest --benchmark`` at the paper's
shapes, inside one time budget, everything brought back as three files.

    bash bench/gpu_check.sh OUT_DIR [--budget SECONDS]   # on the GPU machine
    bash bench/gpu_check.sh OUT_DIR --rehearse           # the same steps on a CPU
    bash bench/gpu_check.sh --fetch-wheels               # here, with PyPI: fills .whl/

Steps (a step that outlives its share of the budget gets SIGINT, so pytest still writes
what it finished; no benchmark case starts within its own time need of the end):
  0. carried wheels (.whl/*.whl, e.g. soundfile, which the GPU image lacks) into a private
     folder on PYTHONPATH; preflight: torch, CUDA, the packages. Without a CUDA device: a
     "no CUDA device" summary, exit 2 (``--rehearse`` carries on, to try the steps on a CPU);
  1. cpc_fast importable with ``cpc_fast.kernels``? If not (no ``pip install -e .`` there):
     the checkout on PYTHONPATH with bench/_checkout_site (kernels/ as cpc_fast.kernels, as
     the editable install maps it) and the C++ extension built in place (else NumPy);
  2. the CUDA tests, compiled (TRITON_INTERPRET unset): every tests/ file that runs the
     fused kernels or has ``cuda``-marked tests, in parallel with pytest-xdist (among them
     tests/test_info_nce_graphs.py: a CUDA graph of the loss replayed, fresh negatives at
     every replay);
  3. memcheck: bench/sanitize_cases.py (one small case of every kernel, bad indices and the
     deterministic d_keys pass's old out-of-bounds trigger included) under
     ``compute-sanitizer --tool memcheck`` with PyTorch's caching allocator off. Where the
     tool is absent the cases run without it and the summary says the check was skipped;
     a CPU rehearsal runs them in the interpreter with its bounds check instead;
  4. ``pytest --benchmark`` (training step first, with ``fused-compile``: the step under
     ``--compile``; CUDA events), saved as the next run of this device's results folder
     (the checkout's bench/results/<device>/ continued) and as JSON; the protocol suite is
     left to step 5;
  5. the experiment protocol on the GPU (bench/bench_protocol.py's GPU cases: the demo's
     units one at a time versus four workers sharing the GPU, units per minute), in its
     own share of the budget (``--protocol-budget``, 0 skips it), kept as protocol.json (not
     saved as a run of the folder: the benchmarks page shows a device's newest run, step 4's);
  6. summary.md: device, versions, commands, steps, test counts and failures, the tables.

OUT_DIR gets summary.md, benchmarks.json and protocol.json (when they finished) and gpu-check.tar.gz
(logs, JUnit XML, nvidia-smi, the saved run under results/). Keep the run with
``tar -xzf OUT_DIR/gpu-check.tar.gz -C bench results && python bench/readme_tables.py --readme``.
Exit: 0 all passed and measured, 1 something failed or was cut, 2 nothing could run.

Through the device tool: ``run(command="bash bench/gpu_check.sh $OUT", carry=[".whl"],
timeout_s=590)``. The default budget (510 s: 150 of them for the protocol's two cases, the
other benchmarks keeping the 115 s they had before it) plus the machine's start fits 15
minutes of device time once; ``--protocol-budget 0 --budget 360`` (and
``timeout_s=480``) is the check without the protocol, which leaves time for one rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

import readme_tables as report  # this script runs from bench/, which is on sys.path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WHEELS = ("soundfile==0.14.0", "cffi==2.0.0", "pycparser==3.0")  # what the GPU image lacks
RESERVE_S = 25  # kept for the summary and the archive
MEMCHECK_S = 90  # sanitized launches are slow; the Triton compiles are most of it
PROTOCOL = "bench/bench_protocol.py"  # its own step: whole launches, minutes per round
SANITIZER_PATHS = ("/usr/local/cuda/bin/compute-sanitizer", "/opt/cuda/bin/compute-sanitizer")
# The fused-kernel test files: they skip unless CUDA or Triton's interpreter is there.
CUDA_TEST_FILE = re.compile(r'mark\.cuda|get\("TRITON_INTERPRET"\) != "1"')
PREFLIGHT = r"""
import importlib, importlib.metadata, json, platform
info = {"python": platform.python_version(), "packages": {}}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.cuda.is_available()
    info["cuda_version"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name(0) if info["cuda"] else None
except Exception as exc:
    info["torch"], info["cuda"] = f"unavailable ({exc})", False
for module, dist in [("triton", "triton"), ("pytest", "pytest"), ("xdist", "pytest-xdist"),
                     ("pytest_benchmark", "pytest-benchmark"), ("soundfile", "soundfile"),
                     ("numpy", "numpy"), ("transformers", "transformers")]:
    try:  # soundfile is imported, not just found: it also needs its libsndfile
        if module in ("soundfile", "xdist", "pytest_benchmark"):
            importlib.import_module(module)
        elif importlib.util.find_spec(module) is None:
            raise ImportError(f"no module named {module}")
        info["packages"][dist] = importlib.metadata.version(dist)
    except Exception as exc:
        info["packages"][dist] = None
        info.setdefault("missing", {})[dist] = f"{type(exc).__name__}: {exc}"
print(json.dumps(info))
"""


class Check:
    def __init__(self, out: Path, budget: float, tests_budget: float, argv: list[str]):
        self.start = time.time()
        self.out, self.budget, self.tests_budget, self.argv = out, budget, tests_budget, argv
        self.work = Path(tempfile.mkdtemp(prefix="cpc-fast-gpu-check-"))
        self.env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.env.update(PYTHONUNBUFFERED="1", TRITON_DEFAULT_FP_FUSION="1")
        self.steps: list[tuple[str, str, float, str]] = []  # name, exit, seconds, note
        self.notes: list[str] = []
        self.pre: dict = {}

    def left(self) -> float:
        return self.budget - (time.time() - self.start)

    def python(self, code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A short Python probe in this check's environment (a hung one counts as failed)."""
        cmd = [sys.executable, "-c", code]
        try:
            return subprocess.run(
                cmd, cwd=cwd or self.work, env=self.env, capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, -1, "", "timed out after 120 s")

    def run(self, name: str, cmd: list[str], seconds: float, **env: str) -> int | None:
        """Runs ``cmd`` in the checkout with its output in ``<name>.log``; SIGINT when its
        time is up (capped by what the budget has left). None when it could not start."""
        seconds = min(seconds, self.left() - RESERVE_S)
        if seconds < 15:
            self.steps.append((name, "not run", 0.0, "the time budget was spent"))
            return None
        log, began, note = self.work / f"{name}.log", time.time(), ""
        with open(log, "w") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n")
            fh.flush()
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env={**self.env, **env}, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                rc = proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                note = f"stopped after its {seconds:.0f} s"
                rc = _interrupt(proc)
        self.steps.append((name, str(rc), time.time() - began, note))
        print(f"== {name}: exit {rc} after {time.time() - began:.0f} s {note}", flush=True)
        return rc

    # -- steps ---------------------------------------------------------------------------
    def install_carried_wheels(self) -> None:
        wheels = sorted((ROOT / ".whl").glob("*.whl"))
        if not wheels:
            return
        site = self.work / "site"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--no-cache-dir", "--target", str(site), *map(str, wheels)]
        if self.run("carried-wheels", cmd, 60) == 0:
            self.env["PYTHONPATH"] = _path_list(site, self.env.get("PYTHONPATH"))
            self.notes.append(f"carried wheels: {', '.join(w.name for w in wheels)}")

    def preflight(self) -> dict:
        done = self.python(PREFLIGHT)
        (self.work / "preflight.json").write_text(done.stdout + done.stderr)
        if done.returncode == 0:
            self.pre = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            self.notes.append(f"preflight failed: {done.stderr.strip()[-500:]}")
        smi, text = shutil.which("nvidia-smi"), "nvidia-smi: not available"
        try:
            if smi:
                text = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
        except subprocess.TimeoutExpired:
            text = "nvidia-smi: no answer in 30 s"
        (self.work / "nvidia-smi.txt").write_text(text)
        return self.pre

    def make_importable(self) -> bool:
        probe = "import cpc_fast, cpc_fast.kernels.info_nce; print(cpc_fast.__file__)"
        done = self.python(probe)
        if done.returncode == 0 and Path(done.stdout.strip()).is_relative_to(ROOT):
            self.notes.append("cpc_fast: the installed checkout")
            return True
        self.env["PYTHONPATH"] = _path_list(
            ROOT, BENCH / "_checkout_site", self.env.get("PYTHONPATH")
        )
        self.notes.append("cpc_fast: the checkout on PYTHONPATH (not installed here)")
        built = self.run("build-extension", [sys.executable, "setup.py", "build_ext", "-i"], 120)
        if built != 0:
            self.notes.append("C++ extension not built: batching uses its NumPy fallback")
        done = self.python(probe)
        if done.returncode != 0:
            self.notes.append(f"cpc_fast cannot be imported: {done.stderr.strip()[-500:]}")
        return done.returncode == 0

    def cuda_tests(self) -> None:
        files = [
            str(p.relative_to(ROOT))
            for p in sorted((ROOT / "tests").glob("test_*.py"))
            if CUDA_TEST_FILE.search(p.read_text())
        ]
        cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider"]
        cmd.append(f"--junitxml={self.work / 'cuda-tests.xml'}")
        if self.pre.get("packages", {}).get("pytest-xdist"):
            cmd += ["-n", "8"]  # the Triton compilations are most of this step
        self.run("cuda-tests", cmd, self.tests_budget)

    def memcheck(self, on_gpu: bool) -> None:
        """bench/sanitize_cases.py under compute-sanitizer's memcheck; without the tool the
        cases still run (compiled on a GPU, interpreted and bounds-checked on a CPU)."""
        cases = [sys.executable, "bench/sanitize_cases.py"]
        tool = shutil.which("compute-sanitizer") or next(
            (p for p in SANITIZER_PATHS if os.path.exists(p)), None
        )
        env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # every tensor its own allocation
        if not on_gpu:
            env["TRITON_INTERPRET"] = "1"
        if tool and on_gpu:
            cmd = [tool, "--tool", "memcheck", "--error-exitcode", "1", *cases]
            self.run("memcheck", cmd, MEMCHECK_S, **env)
            return
        if on_gpu:
            self.notes.append("memcheck: skipped, compute-sanitizer is not installed here; "
                              "the cases ran compiled without it")  # fmt: skip
        else:
            self.notes.append("memcheck: skipped, no GPU; the cases ran in the interpreter "
                              "with its bounds check (tests/interpreter_bounds.py)")  # fmt: skip
        self.run("memcheck-cases-unsanitized", cases, MEMCHECK_S, **env)

    def storage(self) -> Path:
        """This device's results folder (the checkout's copy continued), made once."""
        slug = self.python("import _harness; print(_harness.device_slug())", cwd=BENCH)
        if slug.returncode != 0:
            self.notes.append(f"device folder unknown: {slug.stderr.strip()[-300:]}")
        storage = self.work / "results" / (slug.stdout.strip() or "unknown-device")
        if not storage.is_dir() and (BENCH / "results" / storage.name).is_dir():
            shutil.copytree(BENCH / "results" / storage.name, storage)
        return storage

    def benchmarks(self, keep_s: float) -> None:
        """Every suite but the protocol's, leaving ``keep_s`` of the budget for it."""
        storage = self.storage()
        compare = ["--benchmark-compare"] if list(storage.glob("*/0*.json")) else []
        cmd = [sys.executable, "-m", "pytest", "--benchmark", "-p", "no:cacheprovider"]
        cmd += [f"--benchmark-storage=file://{storage}", "--benchmark-max-time=0.5", *compare]
        cmd += [f"--benchmark-json={self.work / 'benchmarks.json'}", f"--ignore={PROTOCOL}"]
        seconds = self.left() - RESERVE_S - keep_s
        deadline = time.time() + seconds - 20  # the last case finishes, the JSON is written
        self.run("benchmarks", cmd, seconds, BENCH_DEADLINE=str(deadline),
                 BENCH_PARTIAL=str(self.work / "partial.jsonl"))  # fmt: skip

    def protocol(self, seconds: float) -> None:
        """bench/bench_protocol.py's GPU cases: one unit at a time versus several workers
        sharing the GPU (the CPU cases are not measured under the deadline)."""
        if seconds <= 0:
            self.notes.append("protocol: skipped (--protocol-budget 0)")
            return
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", PROTOCOL, "-k", "gpu"]
        cmd += ["--benchmark-long"]
        cmd += [f"--benchmark-json={self.work / 'protocol.json'}"]
        seconds = min(seconds, self.left() - RESERVE_S)
        deadline = time.time() + seconds - 20
        self.run("protocol", cmd, seconds, BENCH_DEADLINE=str(deadline),
                 BENCH_PARTIAL=str(self.work / "protocol-partial.jsonl"))  # fmt: skip

    # -- results -------------------------------------------------------------------------
    def finish(self, status: int, headline: str) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("benchmarks.json", "protocol.json"):
            if (self.work / name).is_file():
                shutil.copy(self.work / name, self.out / name)
        summary = self.summary(status, headline)
        (self.work / "summary.md").write_text(summary)
        (self.out / "summary.md").write_text(summary)
        with tarfile.open(self.out / "gpu-check.tar.gz", "w:gz") as tar:
            for path in sorted(self.work.iterdir()):
                if path.name != "site":
                    tar.add(path, arcname=path.name)
        shutil.rmtree(self.work, ignore_errors=True)
        print(summary)
        return status

    def summary(self, status: int, headline: str) -> str:
        pre, packages = self.pre, self.pre.get("packages", {})
        lines = [
            f"# GPU check: {pre.get('gpu') or 'no CUDA device'}",
            "",
            f"**{headline}** (exit {status}, {time.time() - self.start:.0f} s of a "
            f"{self.budget:.0f}-s budget, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"- command: `{shlex.join(['bash', 'bench/gpu_check.sh', *self.argv])}`",
            f"- python {pre.get('python', '?')}, torch {pre.get('torch', '?')}, CUDA "
            f"{pre.get('cuda_version')}; "
            + ", ".join(f"{k} {v or 'MISSING'}" for k, v in packages.items()),
            *[f"- {note}" for note in self.notes],
            *[f"- missing: {k} ({v})" for k, v in pre.get("missing", {}).items()],
            "",
        ]
        if self.steps:
            lines += ["| step | exit | seconds | note |", "|---|---|---|---|"]
            lines += [f"| {n} | {rc} | {s:.0f} | {note} |" for n, rc, s, note in self.steps]
            lines.append("")
        lines += _test_counts(self.work / "cuda-tests.xml")
        lines += _benchmark_tables(self.work)
        lines += _benchmark_tables(self.work, "protocol.json", "protocol-partial.jsonl")
        lines += ["Logs, JUnit XML, nvidia-smi and the saved run: gpu-check.tar.gz.", ""]
        return "\n".join(lines)


def _interrupt(proc: subprocess.Popen) -> int:
    """SIGINT to the step's process group (pytest then reports what finished), then KILL."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def _path_list(*entries) -> str:
    return os.pathsep.join(str(e) for e in entries if e)


def _test_counts(junit: Path) -> list[str]:
    if not junit.is_file():
        return ["Tests: no JUnit report (the step did not run or was cut before writing).", ""]
    root = ElementTree.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    total["skipped"] = sum(int(s.get("skipped", 0)) for s in suites)
    lines = ["Tests: " + ", ".join(f"{v} {k}" for k, v in total.items()), ""]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    lines += [f"- FAILED {name}" for name in failed[:30]]
    return lines + ([""] if failed else [])


def _benchmark_tables(
    work: Path, name: str = "benchmarks.json", partial_name: str = "partial.jsonl"
) -> list[str]:
    """The tables of the JSON pytest-benchmark wrote, or of the cases that finished before
    an interrupted run (bench/_harness.py logs each one)."""
    full, partial = work / name, work / partial_name
    if full.is_file():
        return ["## Benchmarks", "", report.render_markdown(report.file_tables(report.load(full)))]
    if not partial.is_file():
        return [f"Benchmarks ({name}): none ran.", ""]
    records = [json.loads(line) for line in partial.read_text().splitlines() if line]
    done = [r["benchmark"] for r in records if "benchmark" in r]
    skipped = [r["not_measured"] for r in records if "not_measured" in r]
    return [
        "## Benchmarks (interrupted: the cases that finished)",
        "",
        report.render_markdown(report.tables(done, skipped)),
    ]


def fetch_wheels() -> int:
    target = ROOT / ".whl"
    target.mkdir(exist_ok=True)
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(target)]
    cmd += [arg for p in platforms for arg in ("--platform", p)]
    return subprocess.run([*cmd, *WHEELS]).returncode


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, help="where the three files go")
    parser.add_argument("--budget", type=float, default=510, help="seconds for everything")
    parser.add_argument("--tests-budget", type=float, default=130, help="seconds for tests")
    parser.add_argument(
        "--protocol-budget", type=float, default=150, help="seconds for the protocol (0: skip)"
    )
    parser.add_argument("--rehearse", action="store_true", help="go on without a CUDA device")
    parser.add_argument("--fetch-wheels", action="store_true", help=f"download {WHEELS}")
    args = parser.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels()
    if args.out is None:
        parser.error("OUT_DIR is required")
    check = Check(args.out, args.budget, args.tests_budget, argv)
    check.install_carried_wheels()
    pre = check.preflight()
    if not pre.get("cuda") and not args.rehearse:
        return check.finish(2, "no CUDA device: torch sees no GPU here, nothing was measured")
    if not check.make_importable():
        return check.finish(2, "cpc_fast cannot be imported here: nothing was measured")
    check.cuda_tests()
    check.memcheck(bool(pre.get("cuda")))
    check.benchmarks(keep_s=args.protocol_budget)
    check.protocol(args.protocol_budget)
    failed = [s for s in check.steps if s[1] != "0" and s[0] != "build-extension"]
    where = "" if pre.get("cuda") else " (a rehearsal on a CPU: no GPU figure)"
    if failed:
        names = ", ".join(s[0] for s in failed)
        return check.finish(1, f"finished with failures: {names}{where}")
    return check.finish(0, f"every step passed{where}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
