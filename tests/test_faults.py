"""Faults while training, through the real CLI: divergence, impossible launches, errors of the
system (a full disk, a folder it may not write, too many open files), two runs in one
folder, SIGTERM, file modes, and a damaged weights file in a finished run."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import one_error_line, run_main
from emotion_fixtures import small_manifest, write_wav
from safetensors.torch import load_file
from typer.testing import CliRunner

from cpc_fast import load_cpc
from cpc_fast.cli import app
from cpc_fast.errors import TrainingDiverged
from cpc_fast.io import atomic
from cpc_fast.io.checkpoint import load_state, save_state, weights_stamp
from cpc_fast.io.lock import FolderLock
from cpc_fast.io.metrics import read_metrics
from cpc_fast.training import step as step_module
from cpc_fast.training.distributed import DistEnv
from cpc_fast.training.guard import NonFiniteGuard

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["pretrain", "--preset", "tiny", "--no-progress", "--log-every", "2"]


def _main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The real entry point: (exit status, stderr)."""
    code, _, err = run_main(args, capsys)
    return code, err


def _finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


# --------------------------------------------------------------------------- divergence


def test_diverged_pretraining_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--lr", "1e30", "--save-every", "1", "--max-steps", "20", "--out", str(out)]
    line = one_error_line(*_main(args, capsys))
    # Step 1 moves every weight by about lr; step 2's loss is the first NaN.
    assert "training diverged at step 2: the loss is NaN or infinite" in line
    assert "checkpoint of step 1" in line and "--lr" in line and "--skip-nonfinite" in line
    state = load_state(out / "state.pt")
    assert state["step"] == 1 and _finite(state["model"])
    assert _finite(load_file(out / "model.safetensors"))
    assert weights_stamp(out / "model.safetensors") == state["stamp"]
    load_cpc(out)
    assert all(math.isfinite(r["value"]) for r in read_metrics(out / "metrics.csv"))
    assert not (out / "summary.json").exists()


class _PoisonLoss:
    """A training step's forward and loss (``step.forward_loss``) whose result on the calls in
    ``at`` (1-based) is NaN: the loss, or only its gradient (an identity whose backward is
    infinite)."""

    def __init__(self, real, at: tuple[int, ...], where: str = "loss") -> None:
        self.real, self.at, self.where, self.calls = real, at, where, 0

    def __call__(self, *args, **kwargs):
        result = self.real(*args, **kwargs)
        self.calls += 1
        if self.calls not in self.at:
            return result
        loss = result.loss * math.nan if self.where == "loss" else _InfGrad.apply(result.loss)
        return result._replace(loss=loss)


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_the_first_bad_step_and_quantity_are_named(tmp_path, capsys, monkeypatch, where):
    monkeypatch.setattr(
        step_module, "forward_loss", _PoisonLoss(step_module.forward_loss, (3,), where)
    )
    out = tmp_path / "run"
    line = one_error_line(*_main([*TINY, "--max-steps", "8", "--out", str(out)], capsys))
    # Checked where the loop syncs (the log at step 4), it names step 3; nothing is saved.
    assert f"training diverged at step 3: the {where} is NaN or infinite" in line
    assert "no checkpoint was written" in line
    assert not (out / "state.pt").exists() and not (out / "model.safetensors").exists()


def test_skip_nonfinite_skips_a_bounded_number_of_steps(tmp_path, capsys, monkeypatch):
    real = step_module.forward_loss
    monkeypatch.setattr(step_module, "forward_loss", _PoisonLoss(real, (3,), "gradient"))
    out = tmp_path / "run"
    args = [*TINY, "--max-steps", "6", "--skip-nonfinite", "1", "--out", str(out)]
    assert _main(args, capsys)[0] == 0
    state = load_state(out / "state.pt")
    assert state["step"] == 6 and state["nonfinite_skipped"] == 1 and _finite(state["model"])
    # Step 3 was not applied: the weights are not those of a run without the bad step.
    monkeypatch.setattr(step_module, "forward_loss", real)
    assert _main([*TINY, "--max-steps", "6", "--out", str(tmp_path / "clean")], capsys)[0] == 0
    clean = load_state(tmp_path / "clean" / "state.pt")["model"]
    assert any(not torch.equal(state["model"][k], clean[k]) for k in clean)

    # Once the budget is spent, the next bad step stops the run.
    monkeypatch.setattr(step_module, "forward_loss", _PoisonLoss(real, (2, 4)))
    args = [*TINY, "--max-steps", "8", "--skip-nonfinite", "1", "--out", str(tmp_path / "two")]
    line = one_error_line(*_main(args, capsys))
    assert "at step 4: the loss is NaN or infinite after 1 skipped step(s)" in line


def test_the_guard_does_not_wait_for_the_device(monkeypatch):
    """Without a skip budget, observing a step reads nothing back to the host."""
    guard = NonFiniteGuard(DistEnv(0, 1, 0, torch.device("cpu")), step=10)
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.tensor([1.0, math.nan, 0.0])

    def host_sync(*args, **kwargs):
        raise AssertionError("a host synchronisation in observe()")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, host_sync)
    assert guard.observe(torch.tensor(1.0), [weight]) is True  # step 11: the gradient
    assert guard.observe(torch.tensor(math.inf), [weight]) is True  # step 12: both
    monkeypatch.undo()
    with pytest.raises(TrainingDiverged, match="at step 11: the gradient is NaN or infinite"):
        guard.check()


@pytest.mark.slow
def test_diverged_recognizer_training_stops_before_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["experiment", "--dataset", "synthetic", "--preset", "tiny", "--setups", "sup"]
    args += ["--folds", "1", "--runs", "1", "--epochs", "2", "--lr", "1e30", "--out", str(out)]
    line = one_error_line(*_main([*args, "--quiet"], capsys))
    assert "training diverged at epoch 1, batch" in line and "--lr" in line
    unit = out / "sup" / "fold1" / "run1"
    assert not (unit / "done").exists() and not (unit / "state.pt").exists()
    assert not (out / "results.json").exists()


# --------------------------------------------------------------------------- launching


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-machine message")
@pytest.mark.parametrize("command", ["pretrain", "experiment"])
def test_more_gpus_than_present_is_refused_at_once(tmp_path, capsys, command):
    out = tmp_path / "x"
    args = [command, "--gpus", "99", "--out", str(out)]
    if command == "experiment":
        args += ["--dataset", "synthetic", "--setups", "sup"]
    start = time.monotonic()
    line = one_error_line(*_main(args, capsys))
    assert time.monotonic() - start < 10
    assert "--gpus 99: no CUDA GPU is visible here" in line and "--cpu-processes 99" in line
    assert not out.exists()


def test_cpu_processes_are_bounded_by_the_cores(tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    args = [*TINY, "--cpu-processes", str(cores + 1), "--out", str(tmp_path / "x")]
    line = one_error_line(*_main(args, capsys))
    assert f"--cpu-processes {cores + 1} asks for more processes than the {cores}" in line
    both = [*TINY, "--gpus", "2", "--cpu-processes", "2", "--out", str(tmp_path / "x")]
    assert "not both" in one_error_line(*_main(both, capsys))


# --------------------------------------------------------------------------- the system


def _fail_writes_of(monkeypatch, name: str, at: int, error: int = errno.ENOSPC) -> None:
    """``os.fsync`` fails with ``error`` on the ``at``-th write (1-based) of a file called
    ``name`` (atomic writes fsync their temporary file before renaming it)."""
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            calls["n"] += 1
            if calls["n"] == at:
                raise OSError(error, os.strerror(error))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("name", ["model.safetensors", "state.pt"])
def test_a_full_disk_leaves_a_consistent_run_that_resumes(tmp_path, capsys, monkeypatch, name):
    out = tmp_path / "run"
    args = [*TINY, "--max-steps", "8", "--save-every", "2", "--out", str(out)]
    with monkeypatch.context() as patch:
        _fail_writes_of(patch, name, at=2)  # the checkpoint of step 4
        line = one_error_line(*_main(args, capsys))
    assert f"{out / name}: No space left on device" in line and "run the same command" in line
    state = load_state(out / "state.pt")
    assert state["step"] == (4 if name == "model.safetensors" else 2)
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
    # The weights file is one checkpoint behind the state (or with it): resuming repairs it.
    code, err = _main(args, capsys)
    assert code == 0, err
    state = load_state(out / "state.pt")
    assert state["step"] == 8 and weights_stamp(out / "model.safetensors") == state["stamp"]
    assert _main([*args[:-1], str(tmp_path / "straight")], capsys)[0] == 0
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "straight/model.safetensors")
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_truncated_weights_file_in_a_finished_run_is_rewritten(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--max-steps", "3", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    progress = ["pretrain", "--preset", "tiny", "--max-steps", "3", "--out", str(out)]
    again = CliRunner().invoke(app, progress)
    assert again.exit_code == 0, again.output
    assert "already complete at step 3" in again.output and "written again" in again.output
    state = load_state(out / "state.pt")
    saved = load_file(weights)
    for key, value in state["model"].items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)


def test_a_folder_it_may_not_write_is_refused_before_indexing(tmp_path, capsys, monkeypatch):
    data = tmp_path / "audio"
    write_wav(data / "a.wav", 1.0)
    out = tmp_path / "ro"
    real = atomic.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's name
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / "x"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    indexed = []
    monkeypatch.setattr("cpc_fast.cli.pretrain._open_data", lambda *a: indexed.append(1))
    line = one_error_line(*_main([*TINY, "--data", str(data), "--out", str(out)], capsys))
    assert line == f"error: {out}: Permission denied" and not indexed


def test_a_read_only_folder_for_real(tmp_path):
    # Root writes through permission bits; as root the command runs without the capabilities
    # that allow it (util-linux's setpriv), so the folder is read-only for it either way.
    drop = "-dac_override,-dac_read_search"
    as_root = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        done = subprocess.run(
            [*(as_root if os.geteuid() == 0 else []), sys.executable, "-m", "cpc_fast", *TINY,
             "--out", str(folder / "run")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        folder.chmod(0o700)
    line = one_error_line(done.returncode, done.stderr)
    assert "Permission denied" in line and str(folder / "run") in line


def test_too_many_open_files_is_an_error_not_a_skipped_file(tmp_path, capsys, monkeypatch):
    data = tmp_path / "audio"
    for k in range(3):
        write_wav(data / f"{k}.wav", 1.0, seed=k)

    def no_descriptors(path, *args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("cpc_fast.data.audio.open", no_descriptors, raising=False)
    code, err = _main([*TINY, "--data", str(data), "--out", str(tmp_path / "run")], capsys)
    line = one_error_line(code, err)
    assert "Too many open files (raise the open-file limit" in line and "skipping" not in err
    assert str(data / "0.wav") in line


def test_an_existing_file_as_out_is_one_line(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    args = ["experiment", "--dataset", "synthetic", "--setups", "sup", "--out", str(out)]
    for command in (args, [*TINY, "--out", str(out)]):
        line = one_error_line(*_main(command, capsys))
        assert f"{out}: --out must be a folder, this is a file" in line
    assert out.read_text() == "mine"


# --------------------------------------------------------------------------- run folders


def test_two_runs_in_one_folder_the_second_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with FolderLock(out):  # another live run holds it
        line = one_error_line(*_main([*TINY, "--max-steps", "2", "--out", str(out)], capsys))
    assert f"in use by process {os.getpid()}" in line and "another folder" in line
    assert not (out / "state.pt").exists()
    # A lock file left by a dead run (nobody holds its lock) is taken over.
    (out / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 999999}) + "\n")
    assert _main([*TINY, "--max-steps", "2", "--out", str(out)], capsys)[0] == 0
    assert load_state(out / "state.pt")["step"] == 2 and not (out / ".lock").exists()


@contextlib.contextmanager
def _running(args: list[str], script: str | None = None):
    """``python -m cpc_fast ARGS`` (or ``python -c SCRIPT ARGS``), killed on the way out."""
    head = ["-c", script] if script else ["-m", "cpc_fast"]
    proc = subprocess.Popen(
        [sys.executable, *head, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _wait_until(ready, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"not ready within {seconds} s"
        time.sleep(0.01)


def _terminate(proc: subprocess.Popen) -> str:
    """Sends SIGTERM; the exit status is then 75 (preempted, resume me) and the return value
    its stderr."""
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 75, err
    assert "preempted (SIGTERM)" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_a_live_run_locks_its_folder_until_it_is_killed(tmp_path, capsys):
    out = tmp_path / "run"
    with _running([*TINY, "--max-steps", "2000", "--save-every", "5", "--out", str(out)]) as proc:
        _wait_until((out / "state.pt").exists, proc)
        line = one_error_line(*_main([*TINY, "--max-steps", "9", "--out", str(out)], capsys))
        assert f"in use by process {proc.pid}" in line
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # SIGKILL leaves the lock file, but nobody holds it: the next run resumes.
    assert (out / ".lock").exists()
    step = load_state(out / "state.pt")["step"]
    code, err = _main([*TINY, "--max-steps", str(step + 2), "--out", str(out)], capsys)
    assert code == 0, err
    assert load_state(out / "state.pt")["step"] == step + 2


@pytest.mark.slow
def test_sigterm_ends_a_run_cleanly(tmp_path):
    out = tmp_path / "run"
    with _running([*TINY, "--max-steps", "2000", "--save-every", "5", "--out", str(out)]) as proc:
        _wait_until((out / "model.safetensors").exists, proc)  # written after state.pt
        _terminate(proc)
    assert not (out / ".lock").exists() and not list(out.glob(".*.tmp"))
    load_cpc(out)


_SLOW_LFBE = """
import sys, time
import cpc_fast.emotion.experiment as experiment
from cpc_fast.cli import main
real = experiment.lfbe_features
def slow(corpus, *args, **kwargs):
    wave = corpus.wave
    corpus.wave = lambda i: (time.sleep(0.05), wave(i))[1]
    return real(corpus, *args, **kwargs)
experiment.lfbe_features = slow
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigterm_during_feature_extraction_leaves_no_temporary_cache(tmp_path):
    """The extraction is slowed down so that SIGTERM lands while a cache entry is built."""
    out = tmp_path / "exp"
    args = ["experiment", "--dataset", "synthetic", "--preset", "tiny", "--setups", "sup"]
    args += ["--folds", "1", "--runs", "1", "--epochs", "1", "--out", str(out), "--quiet"]
    with _running(args, script=_SLOW_LFBE) as proc:
        _wait_until(lambda: bool(list((out / "cache").glob(".lfbe-*"))), proc)
        _terminate(proc)
    assert list((out / "cache").glob(".*")) == [] and not (out / ".lock").exists()


def _kill_processes_of(folder: Path) -> None:
    """SIGKILLs every process whose command line names ``folder``: the launcher and its
    workers, which torchrun starts in sessions of their own."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if proc.name.isdigit() and str(folder).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_a_killed_multi_process_experiment_resumes_its_unit(tmp_path):
    """Two gloo workers killed mid-unit: the same command resumes the unit from its last
    epoch and ends where an uninterrupted run ends; one process may take the unit over."""
    root = small_manifest(tmp_path / "data")
    args = ["experiment", "--dataset", "manifest", "--root", str(root), "--preset", "tiny"]
    args += ["--setups", "sup", "--runs", "1", "--epochs", "40", "--quiet"]
    two = [*args, "--cpu-processes", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out: Path, *flags: str) -> None:
        cmd = [sys.executable, "-m", "cpc_fast", *flags, "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    unit = killed / "sup" / "official" / "run1"
    with _running([*two, "--out", str(killed)]) as proc:
        _wait_until((unit / "state.pt").exists, proc)
        _kill_processes_of(killed)
    assert not (unit / "done").exists()
    # A restart would delete metrics.csv; a resume keeps the rows up to its epoch.
    with open(unit / "metrics.csv", "a") as fh:
        fh.write("0,train,resumed,1\n")
    taken_over = tmp_path / "taken-over"
    shutil.copytree(killed, taken_over)
    run(killed, *two)
    assert "0,train,resumed,1" in (unit / "metrics.csv").read_text()
    run(tmp_path / "uninterrupted", *two)
    results = [
        json.loads((tmp_path / f / "results.json").read_text()) for f in ("killed", "uninterrupted")
    ]
    assert results[0]["setups"] == results[1]["setups"]
    run(taken_over, *args, "--cpu-processes", "1")
    assert (taken_over / "sup" / "official" / "run1" / "done").exists()


def test_stale_cache_temporaries_of_dead_processes_are_removed(tmp_path):
    from cpc_fast.features.cache import cached_features, entry_path

    final = entry_path(tmp_path, "lfbe", {"x": 1})
    host = socket.gethostname()
    dead = tmp_path / f".{final.name}.{host}.999999.abcd"
    live = tmp_path / f".{final.name}.{host}.{os.getpid()}.efgh"
    other = tmp_path / f".{final.name}.another-host.999999.ijkl"
    for folder in (dead, live, other):
        folder.mkdir()
    features = cached_features(tmp_path, "lfbe", {"x": 1}, 2, lambda i: np.ones((3, 2)))
    assert len(features) == 2
    assert not dead.exists() and live.exists() and other.exists()


# --------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_the_umask_allows(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_state(tmp_path / "state.pt", {"step": 1})
        atomic.write_json(tmp_path / "config.json", {"a": 1})
        from cpc_fast.features.cache import cached_features

        entry = cached_features(tmp_path / "cache", "x", {}, 1, lambda i: np.ones((2, 2))).path
    finally:
        os.umask(old)
    for path in (tmp_path / "state.pt", tmp_path / "config.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert entry.stat().st_mode & 0o777 == 0o777 & ~umask


def test_json_files_hold_null_for_a_missing_number(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"x": math.nan, "y": [1.0, math.inf], "z": 2})
    text = (tmp_path / "a.json").read_text()
    assert json.loads(text, parse_constant=pytest.fail) == {"x": None, "y": [1.0, None], "z": 2}
