"""What the preemption tests share: the small run they interrupt, the points where a signal
is raised inside it (:class:`Injector`), one pair of gloo processes that runs the two-process
points and the reference of the runs in subprocesses (:func:`two_process_runs`), and how two
runs' weights are compared."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from cpc_fast.config.pretrain import PretrainConfig, tiny
from cpc_fast.data.corpora.synthetic_speech import SyntheticSpeechCorpus
from cpc_fast.data.windows import WindowCollate
from cpc_fast.io.checkpoint import load_state
from cpc_fast.losses.config import LossConfig
from cpc_fast.models import CPCConfig
from cpc_fast.models.cpc import CPCModel
from cpc_fast.training import checkpointer, distributed, loop, preemption
from cpc_fast.training.data import open_pretrain_data
from cpc_fast.training.preemption import Preempted
from cpc_fast.training.pretrain import pretrain

KINDS = ("data", "forward", "backward", "optimizer", "checkpoint", "validation")
STEPS = 12
E2E_STEPS = 64  # the runs in subprocesses: long enough to be signalled from outside
EVERY = 4  # checkpoints and validations at steps 4 and 8 (and the end)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

# The same small run as command-line flags (the tiny preset, smaller still), for the runs
# in subprocesses; they add --max-steps.
FLAGS = [
    "--preset", "tiny", "--encoder-dim", "16", "--context-dim", "16",
    "--prediction-steps", "4", "--num-negatives", "8", "--window-seconds", "0.32",
    "--batch-size", "2", "--log-every", "3", "--save-every", str(EVERY),
    "--valid-every", str(EVERY),
]  # fmt: skip


def small_config(steps: int = STEPS) -> PretrainConfig:
    """``FLAGS`` as a configuration, ``steps`` long."""
    model = CPCConfig(encoder_dim=16, context_dim=16, prediction_steps=4, encoder_norm="channel")
    return tiny().replace(
        model=model,
        loss=LossConfig(num_negatives=8),
        window_seconds=0.32,
        batch_size=2,
        log_every=3,
        save_every=EVERY,
        valid_every=EVERY,
        max_steps=steps,
    )


@dataclass(frozen=True)
class Point:
    """Where a signal is raised: in ``kind`` of step ``step`` (for a checkpoint or a
    validation: the one after that step), on rank ``rank``."""

    kind: str
    step: int
    signum: int
    rank: int = 0

    def __str__(self) -> str:
        return f"{self.kind}@{self.step}:{signal.Signals(self.signum).name}:rank{self.rank}"


def random_points(seed: int, count: int, last: int, ranks: int = 1) -> list[Point]:
    """``count`` points, each kind in turn at a random step in 1..``last`` (checkpoints and
    validations at a random one of theirs), with a random preemption signal. A rank-0 write
    is the checkpoint's: its points are rank 0's."""
    rng = random.Random(seed)
    points = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        if kind in ("checkpoint", "validation"):
            step = rng.choice(range(EVERY, last + 1, EVERY))
        else:
            step = rng.randint(1, last)
        rank = 0 if kind == "checkpoint" else rng.randrange(ranks)
        points.append(Point(kind, step, rng.choice(SIGNALS), rank))
    return points


class Injector:
    """Raises ``point``'s signal in this process once, at that point, and counts the
    optimizer steps taken (``trained``); ``start``: the step the run resumes at."""

    def __init__(self, point: Point | None, start: int = 0) -> None:
        self.point, self.done, self.trained, self.fired = point, start, 0, False
        self.validating = False
        self._handles: list = []
        self._patched: list = []

    def _at(self, kind: str, step: int) -> None:
        point = self.point
        if point is not None and not self.fired and point.kind == kind and point.step == step:
            self.fired = True
            signal.raise_signal(point.signum)

    def _before_step(self, optimizer, args, kwargs) -> None:
        self._at("optimizer", self.done + 1)

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.done += 1
        self.trained += 1

    def _forward(self, module, inputs) -> None:
        if not isinstance(module, CPCModel):
            return
        if not module.training:
            self._at("validation", self.done)
            return
        self._at("forward", self.done + 1)
        point = self.point
        if point is not None and point.kind == "backward" and point.step == self.done + 1:
            weight = next(module.parameters())
            handle = weight.register_hook(lambda grad: self._at("backward", point.step))
            self._handles.append(handle)

    def _patch(self, owner, name: str, wrap) -> None:
        real = getattr(owner, name)
        setattr(owner, name, wrap(real))
        self._patched.append((owner, name, real))

    def __enter__(self) -> Injector:
        self._handles += [
            register_optimizer_step_pre_hook(self._before_step),
            register_optimizer_step_post_hook(self._after_step),
            torch.nn.modules.module.register_module_forward_pre_hook(self._forward),
        ]

        def collate(real):
            def load(this, items):
                if not self.validating:
                    self._at("data", self.done + 1)
                return real(this, items)

            return load

        def validate(real):
            def run(this, *args, **kwargs):
                self.validating = True
                try:
                    return real(this, *args, **kwargs)
                finally:
                    self.validating = False

            return run

        def save_state(real):
            def write(*args, **kwargs):
                self._at("checkpoint", self.done)
                return real(*args, **kwargs)

            return write

        self._patch(WindowCollate, "__call__", collate)
        self._patch(loop.CPCValidator, "__call__", validate)
        self._patch(checkpointer, "save_state", save_state)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for owner, name, real in reversed(self._patched):
            setattr(owner, name, real)


def differing_weights(a: Path, b: Path) -> list[str]:
    """The tensors of two runs' model.safetensors that differ in any bit."""
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    return [k for k in first if not torch.equal(first[k], second[k])]


def small_corpus():
    """The points' corpus: 12 short utterances (6 steps an epoch), and 1 to validate on."""
    train = SyntheticSpeechCorpus(3, 4, seconds=(0.2, 0.6), seed=1)
    return train, train.held_out(1)


def run_piece(out: Path, point: Point | None, start: int = 0, env=None, data=None, steps=STEPS):
    """One run until it ends or is preempted: (its Injector, the Preempted or None)."""
    train, valid = data or small_corpus()
    restore = preemption.install()
    try:
        with Injector(point, start) as injector:
            try:
                pretrain(small_config(steps), train, valid, out, env=env, progress=False)
            except Preempted as exc:
                return injector, exc
            return injector, None
    finally:
        restore()


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
    # The reference of the runs in subprocesses: FLAGS, on the command's data.
    config = small_config(E2E_STEPS)
    train, valid, _ = open_pretrain_data(
        config.data,
        seed=config.seed,
        sample_rate=config.model.sample_rate,
        min_samples=config.min_samples,
        strict=config.strict,
    )
    run_piece(root / "e2e", None, env=env, data=(train, valid), steps=E2E_STEPS)
    injector, stop = run_piece(root / "reference", None, 0, env)
    records = [{"trained": [injector.trained], "stopped": stop is not None}]
    for i, point in enumerate(points):
        out = root / f"point{i}"
        first, stop = run_piece(out, point if point.rank == rank else None, 0, env)
        saved = int(load_state(out / "state.pt")["step"])
        second, again = run_piece(out, None, saved, env)
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


def two_process_runs(folder: Path, points: list[Point]) -> list[list[dict]]:
    """In two gloo processes: ``folder/e2e`` (the uninterrupted run of ``FLAGS`` with
    ``--max-steps E2E_STEPS``), ``folder/reference`` (the points' uninterrupted run), and each
    point's run in ``folder/point<i>``, signalled and resumed. Returns each rank's records:
    the reference's, then one per point."""
    mp.spawn(_two_process_worker, args=(_free_port(), str(folder), points), nprocs=2, join=True)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]
