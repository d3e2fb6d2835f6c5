"""The pre-training loop: :func:`train_loop` reads top to bottom, each phase of a step one
method of :class:`_Phases`, the "when due" decisions :class:`~cpc_fast.training.due.StepSchedule`'s.

:mod:`cpc_fast.training.pretrain` sets a run up (its folder, model, checkpoint, resume) and
hands it here as a :class:`Run`; where it is travels as :class:`Progress`.

A preemption signal (:mod:`cpc_fast.training.preemption`) lets the step in flight finish:
after it the ranks agree on the step to stop after (:class:`StopVote`, one step later under
several processes), log the steps since the last train row, save that step's checkpoint
and raise :class:`Preempted`. A resumed run continues from that step, so nothing is trained
twice and the run ends as an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.data.samplers import EpochSampler
from cpc_fast.io.metrics import MetricsLogger
from cpc_fast.training import distributed
from cpc_fast.training.checkpointer import Checkpointer
from cpc_fast.training.console import Console
from cpc_fast.training.data import BatchReader, train_windows, window_loader
from cpc_fast.training.due import StepSchedule
from cpc_fast.training.guard import NonFiniteGuard
from cpc_fast.training.meter import TrainMeter
from cpc_fast.training.preemption import Preempted, StopVote, deferred, requested
from cpc_fast.training.seeds import derive_seed
from cpc_fast.training.step import compile_forward_loss, train_step
from cpc_fast.training.validate import CPCValidator


@dataclass
class Progress:
    """Where a run is: saved in state.pt as a whole, restored as a whole."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # positions of the current epoch's order already trained on
    audio_seconds: float = 0.0  # window seconds trained on, all ranks
    skipped: int = 0  # items skipped at read time, all ranks
    train_seconds: float = 0.0  # wall time spent in training steps
    last_valid: dict[str, float] = field(default_factory=dict)
    nonfinite_skipped: int = 0  # steps not applied under `skip_nonfinite`


@dataclass
class Run:
    """What stays fixed while a run trains."""

    config: PretrainConfig
    train_set: Dataset
    valid_set: Dataset | None
    run_dir: Path
    env: distributed.DistEnv
    console: Console
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    checkpoint: Checkpointer
    sampler: EpochSampler
    amp_dtype: torch.dtype | None
    metrics: MetricsLogger | None = None  # rank 0 only

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.log(step, split, values)


def train_loop(run: Run, state: Progress, total: int, last_saved: int) -> None:
    """Trains from ``state`` to step ``total``, then validates and saves the last step."""
    config = run.config
    loop = _Phases(run, state, last_saved)
    schedule = StepSchedule(
        config.log_every, config.valid_every, config.save_every, loop.validator is not None
    )
    bar = run.console.progress_bar(total, state.step)
    loop.meter.restart()
    vote = StopVote(run.env)  # every rank, here: a collective under DDP
    # A preemption signal waits for the end of the step in flight, or of the run.
    with deferred():
        try:
            while state.step < total and state.epoch < config.epochs:
                for batch in loop.epoch_batches():
                    loop.train(batch)
                    epoch_done = loop.advance()
                    bar.update(1)
                    last = state.step >= total
                    due = schedule.after(state.step, epoch_done, last)
                    # Each after the divergence check (rank-independent, so the ranks agree):
                    # they wait for the device anyway.
                    if due.anything:
                        loop.guard.check()
                    if due.log:
                        bar.set_postfix(loop.log_train())
                    if due.validate:
                        loop.validate(announce=True)
                    if due.save:
                        loop.save()
                    loop.meter.restart()  # logs, validations and saves are not counted
                    if last:
                        break
                    if vote.poll():
                        raise loop.preempted()
            vote.close()
        finally:
            bar.close()
            run.console.bar = None
        loop.finish()


class _Phases:
    """The phases of the pre-training loop, one method each; :func:`_loop` runs them."""

    def __init__(self, run: Run, state: Progress, last_saved: int) -> None:
        config, env = run.config, run.env
        self.run, self.state, self.last_saved = run, state, last_saved
        self.reader = BatchReader(config, env, run.console)
        self.valid_reader = BatchReader(config, env, run.console)
        self.windows = train_windows(run.train_set, config)
        self.validator = None
        if run.valid_set is not None:
            valid_windows = train_windows(run.valid_set, config)
            self.validator = CPCValidator(config, env, run.amp_dtype, valid_windows)
        self.meter = TrainMeter(config.model.prediction_steps, env)
        self.window_seconds = config.window_samples / config.model.sample_rate
        self.last_validated = -1
        self.last_logged = state.step
        self.fresh_start, self.windows_read = state.step == 0, 0
        self.compiled = compile_forward_loss(env.device, env.world_size) if config.compile else None
        # NaN/Inf losses and gradients, flagged on the device and checked where the loop syncs.
        self.guard = NonFiniteGuard(
            env,
            state.step,
            skip=config.skip_nonfinite,
            skipped=state.nonfinite_skipped,
            hint=self._kept,
            warn=run.console.warn,
        )

    def epoch_batches(self):
        """The current epoch's batches, from the position the run is at."""
        run, state = self.run, self.state
        run.sampler.set_position(state.epoch, state.consumed)
        self.windows.set_epoch(state.epoch)
        return window_loader(self.windows, run.sampler, run.config, run.env)

    def train(self, batch) -> None:
        """One step: the batch on the device (unreadable items warned about and counted),
        forward, InfoNCE with negatives fresh for each step and rank, backward, Adam; its
        metrics summed on the device."""
        run, state = self.run, self.state
        wave, weight = self.reader(batch)
        out = train_step(
            run.model,
            run.optimizer,
            wave,
            run.config.loss,
            seed=derive_seed(run.config.seed, "negatives", state.step, run.env.rank),
            amp_dtype=run.amp_dtype,
            weight=weight,
            guard=self.guard,
            compiled=self.compiled,
        )
        if weight and not self.guard.last_skipped:
            audio = wave.shape[0] * self.window_seconds * run.env.world_size
            state.audio_seconds += audio
            self.meter.add(out, audio)

    def advance(self) -> bool:
        """The position after a step (the epoch order resumes from ``consumed``); True at an
        epoch's end, where a data set with no readable item is an error, not a run on
        padding."""
        state, sampler = self.state, self.run.sampler
        state.step += 1
        state.consumed += sampler.global_batch
        epoch_done = state.consumed >= sampler.num_items
        if epoch_done:
            state.epoch, state.consumed = state.epoch + 1, 0
            self.windows_read += self.reader.require_audio(len(self.run.train_set))
        state.train_seconds += self.meter.lap()
        return epoch_done

    def log_train(self) -> dict[str, str]:
        """A train-metrics row (the interval's means over all ranks); the progress bar's
        postfix."""
        state = self.state
        row = self.meter.row()
        row["epoch"] = state.epoch + state.consumed / len(self.run.train_set)
        self.run.log(state.step, "train", row)
        self.last_logged = state.step
        return {
            "loss": f"{row['loss']:.3f}",
            "acc": f"{row['accuracy']:.3f}",
            "audio": f"{row['audio_seconds_per_second']:.0f} s/s",
        }

    def validate(self, announce: bool = False) -> None:
        state = self.state
        state.last_valid = self.validator(self.run.model, self.valid_reader)
        self.last_validated = state.step
        self.run.log(state.step, "valid", state.last_valid)
        if announce:
            self.run.console.info(
                f"step {state.step}: validation loss {state.last_valid['loss']:.4f}, "
                f"accuracy {state.last_valid['accuracy']:.3f}"
            )

    def save(self) -> None:
        """The checkpoint; callers check for divergence first: never save a diverged model."""
        state = self.state
        state.skipped += self.reader.sync() + self.valid_reader.sync()
        state.nonfinite_skipped = self.guard.skipped
        self.run.checkpoint.save(self.run.model, self.run.optimizer, state)
        self.last_saved = state.step

    def preempted(self) -> Preempted:
        """After the step the ranks agreed to stop at: its train row (the steps since the
        last one, so that each step's metrics are in one row), its checkpoint unless the
        schedule just wrote it, and every rank waits for rank 0's write before leaving."""
        state = self.state
        self.guard.check()  # never save a diverged model
        if self.last_logged != state.step:
            self.log_train()
        if self.last_saved != state.step:
            self.save()
        distributed.barrier()
        return Preempted(requested(), f"step {state.step} is saved in {self.run.run_dir}")

    def finish(self) -> None:
        """After the last step: the divergence check; the last step validated and saved if
        the schedule did not; every rank's skipped items counted."""
        state = self.state
        self.guard.check()
        if self.fresh_start and self.windows_read + self.reader.count() == 0:
            raise self.reader.no_audio(len(self.run.train_set))  # trained on padding alone
        if self.validator is not None and self.last_validated != state.step:
            self.validate()
        # Only rank-independent conditions may gate a collective (saving all-reduces).
        if self.last_saved != state.step:
            self.save()
        state.skipped += self.reader.sync() + self.valid_reader.sync()

    def _kept(self) -> str:
        """What a divergence error adds: which checkpoint stays, what to change."""
        where = (
            f"the checkpoint of step {self.last_saved} in {self.run.run_dir} is kept"
            if self.last_saved >= 0
            else f"no checkpoint was written in {self.run.run_dir}"
        )
        return f"; {where}. Lower `lr`, or let `skip_nonfinite=N` skip such steps"


__all__ = ["Progress", "Run", "train_loop"]
