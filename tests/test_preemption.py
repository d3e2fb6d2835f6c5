"""Preemption loses at most the step in flight (:mod:`cpc_fast.training.preemption`).

A signal raised at random points of a small run (data loading, forward, backward, the
optimizer step, a checkpoint write, a validation), in one process and in two (gloo), stops
it with that step saved; the run resumed from there ends with the weights of an
uninterrupted run, bit for bit, and the optimizer steps counted in the two pieces add up to
the run's. The points run in this process (and in one pair of processes, conftest's
``two_process_runs``), each a fresh run. Then the command: ``--cpu-processes 2`` signalled
from outside ends with status 75 and resumes to the uninterrupted run's weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runner import one_error_line, run_main
from preemption_harness import (
    E2E_STEPS,
    FLAGS,
    STEPS,
    differing_weights,
    random_points,
    run_piece,
)

from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import load_state
from cpc_fast.training import preemption
from cpc_fast.training.preemption import Preempted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ONE = random_points(seed=30, count=12, last=STEPS - 1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' runs (one_torch_thread is set up after this)
    try:
        injector, stop = run_piece(out, None, 0)
    finally:
        torch.set_num_threads(threads)
    assert stop is None and injector.trained == STEPS
    return out


@pytest.mark.parametrize("point", ONE, ids=str)
def test_one_process_saves_the_step_in_flight_and_resumes_to_the_same_weights(
    point, tmp_path, reference
):
    first, stop = run_piece(tmp_path, point, 0)
    assert first.fired and stop is not None and stop.signum == point.signum
    saved = load_state(tmp_path / "state.pt")["step"]
    assert saved == point.step == first.trained  # the step in flight finished, and saved
    assert f"step {saved} is saved in {tmp_path}" in stop.describe()
    second, again = run_piece(tmp_path, None, saved)
    assert again is None
    assert first.trained + second.trained == STEPS  # nothing trained twice, nothing lost
    assert differing_weights(tmp_path, reference) == []


def test_two_processes_agree_save_the_step_and_resume_to_the_same_weights(two_process_runs):
    """Two gloo processes, the signal raised in one of them at each point: both stop after
    the same step (the next one: the vote is read a step later), which is saved."""
    folder, ranks, points = two_process_runs
    for rank in ranks:
        assert rank[0] == {"trained": [STEPS], "stopped": False}
    for i, point in enumerate(points, start=1):
        signalled, other = ranks[point.rank][i], ranks[1 - point.rank][i]
        assert signalled["fired"] and signalled["signum"] == point.signum, point
        assert other["stopped"] and other["signum"] is None, point  # told by the vote
        for record in (signalled, other):
            assert record["saved"] == point.step + 1, point
            assert record["trained"] == [point.step + 1, STEPS - point.step - 1], point
            assert not record["again"]
        run = folder / f"point{i - 1}"
        assert differing_weights(run, folder / "reference") == [], point


# --------------------------------------------------------------------------- the signals


def test_the_signals_come_from_the_environment(monkeypatch):
    assert preemption.preemption_signals() == (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    monkeypatch.setenv(preemption.SIGNALS_VARIABLE, " term, SIGUSR1 ,usr1")
    assert preemption.preemption_signals() == (signal.SIGTERM, signal.SIGUSR1)
    for bad in ("INT", "SIGKILL", "NOPE"):
        monkeypatch.setenv(preemption.SIGNALS_VARIABLE, f"TERM,{bad}")
        with pytest.raises(UserInputError, match=f"{preemption.SIGNALS_VARIABLE}=.*{bad}"):
            preemption.preemption_signals()


def test_a_bad_signal_list_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv(preemption.SIGNALS_VARIABLE, "USR3")
    line = one_error_line(*run_main(["info"], capsys)[::2])
    assert "CPC_FAST_PREEMPT_SIGNALS='USR3': USR3 is not a signal that can preempt" in line


def test_outside_a_loop_a_signal_stops_at_once_and_a_repeat_changes_nothing():
    restore = preemption.install()
    try:
        with pytest.raises(Preempted) as caught:
            signal.raise_signal(signal.SIGUSR1)
        assert caught.value.signum == signal.SIGUSR1
        signal.raise_signal(signal.SIGUSR2)  # the stop is under way: nothing more happens
        assert preemption.requested() == signal.SIGUSR1
        assert "preempted (SIGUSR1); run the same command again" in caught.value.describe()
    finally:
        restore()
    assert preemption.requested() is None


def test_inside_deferred_a_signal_only_asks():
    restore = preemption.install()
    try:
        with preemption.deferred():
            signal.raise_signal(signal.SIGTERM)
            assert preemption.requested() == signal.SIGTERM
    finally:
        restore()


# --------------------------------------------------------------------------- the command


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "cpc_fast", "pretrain", *FLAGS, "--max-steps", str(E2E_STEPS),
            "--cpu-processes", "2", "--out", str(out)]  # fmt: skip


def test_the_command_signalled_from_outside_exits_75_and_resumes(tmp_path, two_process_runs):
    """``--cpu-processes 2``, the signal sent to the launching process (``kill PID``): torch's
    launcher passes it on, both workers save the same step and exit with 75, and so does the
    command; run again, it ends with the weights of the uninterrupted run."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "state.pt").exists():  # step 4: training, well before the end
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == preemption.PREEMPTED_EXIT_STATUS, err[-3000:]
    saved = int(load_state(out / "state.pt")["step"])
    assert 4 <= saved < E2E_STEPS
    assert f"preempted (SIGTERM): step {saved} is saved in {out}; run the same command" in err
    assert "Traceback" not in err
    again = subprocess.run(_command(out), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming at step {saved}:" in again.stdout  # trained the rest, and only that
    assert load_state(out / "state.pt")["step"] == E2E_STEPS
    assert differing_weights(out, two_process_runs[0] / "e2e") == []
