"""Task-parallel experiments: claim files, the task order, and the CLI with several workers
and several launches on one folder (every unit once, a killed worker taken over, the same
bits as one process)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cpc_fast.data.labelled import Fold
from cpc_fast.emotion.schedule import plan
from cpc_fast.io.claims import ClaimBoard

# --------------------------------------------------------------------------- claim files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_exclusive_until_released(tmp_path: Path) -> None:
    mine, theirs = ClaimBoard(tmp_path, "a"), ClaimBoard(tmp_path, "b")
    claim = mine.try_claim("sup.fold1.run1")
    assert claim is not None
    assert theirs.try_claim("sup.fold1.run1") is None  # a live process (this one) holds it
    assert mine.try_claim("sup.fold1.run1") is None  # also for a second try of its owner
    assert [o.pid for o in theirs.live_owners()] == [os.getpid()]
    claim.release()
    again = theirs.try_claim("sup.fold1.run1")
    assert again is not None and again.took_over is None
    again.release()


def test_a_dead_workers_claim_is_taken_over_by_one_worker(tmp_path: Path) -> None:
    board = ClaimBoard(tmp_path, "a")
    owner = {"host": board.host, "pid": _dead_pid(), "started": None, "launch": "x"}
    (tmp_path / "t.claim").write_text(json.dumps({**owner, "token": "dead1"}))
    first, second = board.try_claim("t"), ClaimBoard(tmp_path, "b").try_claim("t")
    assert first is not None and first.took_over.pid == owner["pid"]
    assert second is None  # the takeover marker of that dead claim was taken
    assert json.loads((tmp_path / "t.claim").read_text())["pid"] == os.getpid()
    first.release()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="tells a zombie by /proc")
def test_a_zombie_owner_is_dead(tmp_path: Path) -> None:
    """A worker that exited but is not reaped yet still answers kill(pid, 0)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        time.sleep(0.01)
    board = ClaimBoard(tmp_path, "a")
    owner = {"host": board.host, "pid": proc.pid, "started": None, "launch": "x"}
    (tmp_path / "t.claim").write_text(json.dumps({**owner, "token": "z1"}))
    claim = board.try_claim("t")
    proc.wait()
    assert claim is not None and claim.took_over.pid == proc.pid
    claim.release()


def test_a_reused_pid_is_not_the_dead_owner(tmp_path: Path) -> None:
    """Same pid, another start time: the owner died and its pid went to a new process."""
    board = ClaimBoard(tmp_path, "a")
    owner = {"host": board.host, "pid": os.getpid(), "started": "1", "launch": "x"}
    (tmp_path / "t.claim").write_text(json.dumps({**owner, "token": "t1"}))
    claim = board.try_claim("t")
    assert claim is not None and claim.took_over.token == "t1"
    claim.release()


def test_another_hosts_claim_is_stale_when_its_heartbeat_stops(tmp_path: Path) -> None:
    board = ClaimBoard(tmp_path, "a", stale_after_s=0.3)
    owner = {"host": "elsewhere", "pid": 1, "started": None, "launch": "x", "token": "t1"}
    path = tmp_path / "t.claim"
    path.write_text(json.dumps(owner))
    assert board.try_claim("t") is None  # first seen now: alive until its beat stops
    time.sleep(0.2)
    os.utime(path)  # a heartbeat: the clock starts again
    time.sleep(0.2)
    assert board.try_claim("t") is None
    time.sleep(0.4)
    claim = board.try_claim("t")
    assert claim is not None and claim.took_over.host == "elsewhere"
    claim.release()


def test_a_held_claim_beats(tmp_path: Path) -> None:
    claim = ClaimBoard(tmp_path, "a", heartbeat_s=0.05).try_claim("t")
    os.utime(claim.path, (0, 0))
    time.sleep(0.3)
    assert os.stat(claim.path).st_mtime > 0
    claim.release()
    assert not claim.path.exists()


def test_a_failed_task_waits_for_another_launch(tmp_path: Path) -> None:
    board = ClaimBoard(tmp_path, "a")
    with pytest.raises(ValueError), board.try_claim("t"):
        raise ValueError("diverged\nmore")
    assert json.loads((tmp_path / "t.claim").read_text())["failed"] == "ValueError: diverged"
    assert ClaimBoard(tmp_path, "a").try_claim("t") is None  # this launch: not again
    retry = ClaimBoard(tmp_path, "b").try_claim("t")  # a re-run retries it
    assert retry is not None and retry.took_over.failed
    retry.release()


# --------------------------------------------------------------------------- the order


def test_plan_prepares_first_then_longest_units_first() -> None:
    folds = [(k, Fold(f"fold{k + 1}", (1, 2), (3,), (4,))) for k in range(2)]
    tasks = plan(("sup", "joint", "mini"), folds, runs=2)
    names = [t.name for t in tasks]
    assert names[:3] == ["prep.mini.fold1", "prep.mini.fold2", "prep.lfbe"]
    kinds = [t.setup for t in tasks[3:]]
    assert kinds == ["joint"] * 4 + ["mini"] * 4 + ["sup"] * 4
    assert names[3:5] == ["joint.fold1.run1", "joint.fold1.run2"]
    needs = {t.name: t.needs for t in tasks}
    assert needs["mini.fold2.run1"] == ("prep.mini.fold2",)
    assert needs["sup.fold1.run2"] == ("prep.lfbe",) and needs["joint.fold2.run2"] == ()
    assert len(set(names)) == len(names) == 3 + 12


# --------------------------------------------------------------------------- the CLI

FLAGS = [
    "experiment",
    "--dataset",
    "synthetic",
    "--preset",
    "tiny",
    "--setups",
    "sup,mini",
    "--folds",
    "1,2",
    "--runs",
    "1",
    "--epochs",
    "3",
    "--mini-epochs",
    "1",
    "--quiet",
]
UNITS = [f"{s}/fold{f}/run1" for s in ("sup", "mini") for f in (1, 2)]
TASKS = ["prep.lfbe", "prep.mini.fold1", "prep.mini.fold2"] + [u.replace("/", ".") for u in UNITS]


@contextlib.contextmanager
def _launched(out: Path, *extra: str, quiet: bool = True) -> Iterator[subprocess.Popen]:
    """``cpc-fast experiment FLAGS --out OUT EXTRA``, killed on the way out (its workers die
    with it); ``quiet=False`` drops FLAGS' ``--quiet``."""
    flags = FLAGS if quiet else [f for f in FLAGS if f != "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpc_fast", *flags, "--out", str(out), *extra],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _events(out: Path) -> list[tuple[str, str]]:
    """(event, task) of every line of the folder's events.log."""
    lines = (out / ".claims" / "events.log").read_text().splitlines()
    return [tuple(line.split()[1:3]) for line in lines]


def _weights(path: Path) -> tuple[dict, dict]:
    with safe_open(path, "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()  # noqa: SIM118


def _assert_same_units(a: Path, b: Path) -> None:
    """Every unit's result.json and predictions byte for byte; the weights bit for bit (the
    safetensors header's key order is not fixed, so tensors and metadata are compared)."""
    for unit in UNITS:
        for name in ("result.json", "predictions.csv", "metrics.csv"):
            assert (a / unit / name).read_bytes() == (b / unit / name).read_bytes(), unit
        (wa, ma), (wb, mb) = (
            _weights(a / unit / "model.safetensors"),
            _weights(b / unit / "model.safetensors"),
        )
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), unit
        meta_a, meta_b = json.loads(ma["config"]), json.loads(mb["config"])
        if "cpc" in meta_a["features"]:  # the miniCPC's path is the folder's own
            assert meta_a["features"]["cpc"]["digest"] == meta_b["features"]["cpc"]["digest"]
            meta_a["features"]["cpc"].pop("path"), meta_b["features"]["cpc"].pop("path")
        assert meta_a == meta_b, unit


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The experiment run by one worker: the reference."""
    out = tmp_path_factory.mktemp("one") / "exp"
    with _launched(out, "--cpu-processes", "1") as launch:
        _finish(launch)
    assert sorted(e for e in _events(out) if e[0] == "done") == sorted(("done", t) for t in TASKS)
    return out


@pytest.mark.slow
def test_two_concurrent_launches_share_the_work_and_match_one_process(
    one_process: Path, tmp_path: Path
) -> None:
    """A launch of two workers and a launch of one, on one folder at the same time: every
    task runs exactly once, both launches print the table, the bits are one process's."""
    out = tmp_path / "exp"
    with (
        _launched(out, "--cpu-processes", "2") as two,
        _launched(out, "--cpu-processes", "1") as one,
    ):
        printed = [_finish(two)[0], _finish(one)[0]]
    events = _events(out)
    for task in TASKS:
        assert events.count(("start", task)) == 1 and events.count(("done", task)) == 1, events
    workers = {line.split()[4] for line in (out / ".claims/events.log").read_text().splitlines()}
    assert len(workers) >= 2  # the work was shared
    assert all("| Sup |" in text and "| miniCPC |" in text for text in printed)
    _assert_same_units(one_process, out)
    assert (
        json.loads((out / "results.json").read_text())["setups"]
        == json.loads((one_process / "results.json").read_text())["setups"]
    )


@pytest.mark.slow
def test_a_bare_launch_fills_the_cpu_and_matches_one_process(
    one_process: Path, tmp_path: Path
) -> None:
    """No --cpu-processes on a machine without a GPU: one worker per core here (at most the
    units), which says so first; the bits are one process's."""
    from cpc_fast.io.cpus import available_cpus

    out = tmp_path / "exp"
    with _launched(out, quiet=False) as launch:
        _, err = _finish(launch)
    workers = min(available_cpus(), len(UNITS))
    first = err.lstrip().splitlines()[0]
    assert first.startswith(f"experiment: {workers} CPU worker"), err[:500]
    assert "1 thread" in first and "the default without a GPU" in first
    pids = {line.split()[4] for line in (out / ".claims/events.log").read_text().splitlines()}
    assert len(pids) == workers
    _assert_same_units(one_process, out)


@pytest.mark.slow
def test_a_worker_killed_mid_unit_is_taken_over(one_process: Path, tmp_path: Path) -> None:
    """SIGKILL one of two workers once its unit has a checkpoint: the other worker takes
    the claim over, resumes the unit, and the launch ends complete (status 0, a warning
    naming the dead worker); the bits are one process's."""
    out = tmp_path / "exp"
    with _launched(out, "--cpu-processes", "2") as launch:
        deadline = time.monotonic() + 300
        victim = None
        while victim is None:
            assert launch.poll() is None and time.monotonic() < deadline, launch.stderr.read()
            for unit in UNITS:
                claim = out / ".claims" / f"{unit.replace('/', '.')}.claim"
                if (out / unit / "state.pt").exists() and claim.exists():
                    try:
                        victim = unit, json.loads(claim.read_text())["pid"]
                    except (OSError, ValueError):
                        continue  # being written
                    break
            time.sleep(0.02)
        os.kill(victim[1], signal.SIGKILL)
        _, err = _finish(launch)
    assert "exited abnormally, but every unit is done" in err and "status -9" in err
    task = victim[0].replace("/", ".")
    events = _events(out)
    assert events.count(("done", task)) == 1 and events.count(("start", task)) == 2
    assert (f"takeover-from:{socket.gethostname()}:{victim[1]}", task) in events
    _assert_same_units(one_process, out)


def test_restart_is_refused_while_a_worker_holds_a_task(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--restart deletes the units: never under a live worker's feet."""
    from cli_runner import one_error_line, run_main

    out = tmp_path / "exp"
    claim = ClaimBoard(out / ".claims", "other").try_claim("sup.fold1.run1")
    code, _, err = run_main([*FLAGS, "--out", str(out), "--restart"], capsys)
    claim.release()
    line = one_error_line(code, err)
    assert f"a task is running there (process {os.getpid()} on" in line and "restart" in line
    assert (out / ".claims").is_dir()  # nothing was deleted


# --------------------------------------------------------------------------- sharing a GPU


@pytest.mark.parametrize(
    "share, visible, expected",
    [
        (1, 1, [0, 0, 0, 0]),  # more workers than GPUs (torchrun): wrap around
        (1, 2, [0, 1, 0, 1]),
        (2, 2, [0, 0, 1, 1]),
        (4, 1, [0, 0, 0, 0]),
        (3, 2, [0, 0, 0, 1]),
    ],
)
def test_workers_sharing_a_gpu_fill_one_gpu_then_the_next(share, visible, expected) -> None:
    from cpc_fast.training.workers import gpu_of_worker

    assert [gpu_of_worker(slot, share, visible) for slot in range(4)] == expected


def test_gpu_of_worker_refuses_an_impossible_place() -> None:
    from cpc_fast.training.workers import gpu_of_worker

    for args in [(0, 0, 1), (0, 1, 0), (-1, 1, 1)]:
        with pytest.raises(ValueError, match="at least one worker per GPU"):
            gpu_of_worker(*args)


def test_gpus_n_with_k_workers_per_gpu_launches_n_times_k_workers_k_per_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two (pretended) GPUs, three workers on each: six workers, slots 0-2 on cuda:0 and
    3-5 on cuda:1 (the launch and the device placement, with CUDA mocked on the CPU)."""
    from cpc_fast.config import experiment as presets
    from cpc_fast.emotion import launch as experiment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    launched: list[tuple] = []

    def run_workers(target, args, **_):
        launched.extend(args)
        return [0] * len(args)

    monkeypatch.setattr(experiment, "run_workers", run_workers)
    config = presets.tiny(
        dataset="synthetic",
        setups=("sup",),
        folds=(1,),
        runs=1,
        gpus=2,
        workers_per_gpu=3,
        out=str(tmp_path / "exp"),
    )
    assert experiment.local_workers(config) == 6
    assert experiment.run_experiment(config, progress=False) is None  # nothing ran: no results
    assert [a[1] for a in launched] == list(range(6))  # (config, slot, launch, ...) each
    devices = [experiment._device_env(config, slot).device for slot in range(6)]
    assert [str(d) for d in devices] == ["cuda:0"] * 3 + ["cuda:1"] * 3
    assert chosen == devices


@pytest.mark.parametrize(
    "cores, cpu_processes, units_done, expected",
    [
        (2, None, 0, 2),  # one worker per core
        (8, None, 0, 4),  # at most the units (4)
        (8, None, 3, 1),  # at most the units left: one, in this process
        (1, None, 0, 1),
        (8, 1, 0, 1),  # --cpu-processes 1 still runs one
        (8, 3, 0, 3),
    ],
)
def test_without_a_gpu_the_default_is_a_worker_per_core_at_most_the_units_left(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    cpu_processes: int | None,
    units_done: int,
    expected: int,
) -> None:
    from cpc_fast.config import experiment as presets
    from cpc_fast.emotion import launch as experiment
    from cpc_fast.emotion.experiment import Runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(experiment, "available_cpus", lambda: cores)
    launched: list[tuple] = []
    in_process: list[int] = []

    def run_workers(target, args, **_):
        launched.extend(args)
        return [0] * len(args)

    def run(runner, launch):
        in_process.append(torch.get_num_threads())

    monkeypatch.setattr(experiment, "run_workers", run_workers)
    monkeypatch.setattr(Runner, "run", run)
    monkeypatch.setattr(Runner, "units_done", lambda runner: (units_done, 4))
    config = presets.tiny(
        dataset="synthetic",
        setups=("sup", "pre"),
        folds=(1, 2),
        runs=1,
        gpus=1,  # the default: without CUDA, the CPU
        cpu_processes=cpu_processes,
        pretrained=str(tmp_path / "cpc"),
        out=str(tmp_path / "exp"),
    )
    monkeypatch.setattr(experiment, "Runner", _counting_runner(Runner))
    experiment.run_experiment(config, progress=False)
    if expected == 1:
        assert launched == [] and in_process == [1]  # one thread per unit, in this process
    else:
        assert [a[1] for a in launched] == list(range(expected))


def _counting_runner(runner: type) -> type:
    """``Runner`` without its corpus (the launch's decisions need only the unit counts)."""

    class Bare(runner):
        def __init__(self, config, env, progress):
            self.config = config

        def check_folder(self) -> None:
            pass

    return Bare


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--workers-per-gpu", "0"], "--workers-per-gpu must be at least 1, got 0"),
        (
            ["--workers-per-gpu", "2", "--gpus", "0"],
            "--workers-per-gpu 2 shares GPUs between workers: it needs --gpus N >= 1",
        ),
        (["--workers-per-gpu", "2", "--cpu-processes", "2"], "--workers-per-gpu 2 shares GPUs"),
        (["--workers-per-gpu", "2", "--gpus", "1", "--ddp"], "--workers-per-gpu 2 runs whole"),
    ],
)
def test_bad_workers_per_gpu_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], words: str
) -> None:
    from cli_runner import one_error_line, run_main

    out = tmp_path / "exp"
    line = one_error_line(*run_main([*FLAGS, "--out", str(out), *extra], capsys)[::2])
    assert words in line
    assert not out.exists()  # refused before any work


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-machine message")
def test_workers_per_gpu_without_a_gpu_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cli_runner import one_error_line, run_main

    args = [*FLAGS, "--out", str(tmp_path / "exp"), "--workers-per-gpu", "4"]
    line = one_error_line(*run_main(args, capsys)[::2])
    assert "--workers-per-gpu 4: no CUDA GPU is visible here" in line
    assert "--cpu-processes" in line
