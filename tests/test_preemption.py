"""Preemption loses at most the step in flight (:mod:`cpc_fast.training.preemption`).

A signal raised at random points of a small run (data loading, forward, backward, the
optimizer step, a checkpoint write, a validation), in one process and in two (gloo), stops
it with that step saved; the run resumed from there ends with the weights of an
uninterrupted run, bit for bit, and the optimizer steps counted in the two pieces add up to
the run's. The points run in this process (and in one pair of processes), each a fresh run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from preemption_harness import (
    FLAGS,
    STEPS,
    Injector,
    Point,
    differing_weights,
    random_points,
    small_config,
)

from cpc_fast.data.corpora.synthetic_speech import SyntheticSpeechCorpus
from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import load_state
from cpc_fast.training import distributed, preemption
from cpc_fast.training.preemption import Preempted
from cpc_fast.training.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ONE = random_points(seed=30, count=12, last=STEPS - 1)
# Under two processes the ranks stop one step after the signal (StopVote).
TWO = random_points(seed=31, count=12, last=STEPS - 2, ranks=2)


def _corpus():
    train = SyntheticSpeechCorpus(3, 4, seconds=(0.2, 0.6), seed=1)
    return train, train.held_out(1)


def _piece(out: Path, point: Point | None, start: int, env=None):
    """One run until it ends or is preempted: (its Injector, the Preempted or None)."""
    train, valid = _corpus()
    restore = preemption.install()
    try:
        with Injector(point, start) as injector:
            try:
                pretrain(small_config(), train, valid, out, env=env, progress=False)
            except Preempted as exc:
                return injector, exc
            return injector, None
    finally:
        restore()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' runs (one_torch_thread is set up after this)
    try:
        injector, stop = _piece(out, None, 0)
    finally:
        torch.set_num_threads(threads)
    assert stop is None and injector.trained == STEPS
    return out


@pytest.mark.parametrize("point", ONE, ids=str)
def test_one_process_saves_the_step_in_flight_and_resumes_to_the_same_weights(
    point, tmp_path, reference
):
    first, stop = _piece(tmp_path, point, 0)
    assert first.fired and stop is not None and stop.signum == point.signum
    saved = load_state(tmp_path / "state.pt")["step"]
    assert saved == point.step == first.trained  # the step in flight finished, and saved
    assert f"step {saved} is saved in {tmp_path}" in stop.describe()
    second, again = _piece(tmp_path, None, saved)
    assert again is None
    assert first.trained + second.trained == STEPS  # nothing trained twice, nothing lost
    assert differing_weights(tmp_path, reference) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_worker(rank: int, port: int, folder: str, points: list[Point]) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    env = distributed.init(0)
    root = Path(folder)
    injector, stop = _piece(root / "reference", None, 0, env)
    records = [{"trained": [injector.trained], "stopped": stop is not None}]
    for i, point in enumerate(points):
        out = root / f"point{i}"
        mine = point if point.rank == rank else None
        first, stop = _piece(out, mine, 0, env)
        saved = int(load_state(out / "state.pt")["step"])
        second, again = _piece(out, None, saved, env)
        records.append(
            {
                "fired": first.fired,
                "signum": None if stop is None else stop.signum,
                "stopped": stop is not None,
                "saved": saved,
                "trained": [first.trained, second.trained],
                "again": again is not None,
            }
        )
    (root / f"rank{rank}.json").write_text(json.dumps(records))
    distributed.shutdown()


def test_two_processes_agree_save_the_step_and_resume_to_the_same_weights(tmp_path):
    """Two gloo processes, the signal raised in one of them at each point: both stop after
    the same step (the next one: the vote is read a step later), which is saved."""
    mp.spawn(_two_process_worker, args=(_free_port(), str(tmp_path), TWO), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank[0] == {"trained": [STEPS], "stopped": False}
    for i, point in enumerate(TWO, start=1):
        signalled, other = ranks[point.rank][i], ranks[1 - point.rank][i]
        assert signalled["fired"] and signalled["signum"] == point.signum, point
        assert other["stopped"] and other["signum"] is None, point  # told by the vote
        for record in (signalled, other):
            assert record["saved"] == point.step + 1, point
            assert record["trained"] == [point.step + 1, STEPS - point.step - 1], point
            assert not record["again"]
        folder = tmp_path / f"point{i - 1}"
        assert differing_weights(folder, tmp_path / "reference") == [], point
