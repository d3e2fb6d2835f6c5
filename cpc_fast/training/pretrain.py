"""CPC pre-training: the training loop, DDP, checkpoints and resume.

In Python::

    from cpc_fast.config.pretrain import tiny
    from cpc_fast.data.corpora.synthetic_speech import SyntheticSpeechCorpus
    from cpc_fast.training.pretrain import pretrain

    train = SyntheticSpeechCorpus(8, 24, seconds=(0.5, 1.5))
    run = pretrain(tiny(max_steps=200), train, train.held_out(1), "runs/t")
    model = cpc_fast.load_cpc(run)  # (B, T) -> context (B, floor(T / 160), C)

From the shell (see ``cpc-fast pretrain --help``)::

    cpc-fast pretrain --data /data/LibriSpeech --out runs/ls100 --gpus 8     # one node
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint $HEAD:29500 -m cpc_fast pretrain --data ... --out ...  # two nodes

Every rank trains on its own block of each global batch (``EpochSampler``), DDP averages
the gradients, rank 0 alone reads the checkpoint, logs, shows progress and writes files (the
run folder need not be on a filesystem that other nodes see). The run folder holds
``model.safetensors`` (weights + CPCConfig), ``state.pt`` (weights, optimizer, position,
RNG states; :mod:`cpc_fast.training.checkpointer`), ``config.json``, ``metrics.csv`` and,
at the end, ``summary.json``. Everything random (initialisation, epoch order, random crops,
negatives) derives from the seed, the step and the rank, so a run killed at any point and
started again with the same command continues from its last checkpoint and ends at the
same step count with the same weights as one that was never interrupted. One run at a time
uses a folder (:class:`~cpc_fast.io.lock.FolderLock`). A NaN or infinite loss or gradient
stops the run, naming the first such step, before any later checkpoint is written
(:mod:`cpc_fast.training.guard`); a data set whose items all fail when read is an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.data.samplers import EpochSampler
from cpc_fast.io.atomic import check_writable_folder, write_json
from cpc_fast.io.lock import FolderLock
from cpc_fast.io.metrics import MetricsLogger, truncate_metrics
from cpc_fast.models.cpc import CPCModel
from cpc_fast.models.loading import save_cpc
from cpc_fast.training import distributed
from cpc_fast.training.checkpointer import Checkpointer
from cpc_fast.training.console import Console
from cpc_fast.training.data import BatchReader, prepared_sets, train_windows, window_loader
from cpc_fast.training.guard import NonFiniteGuard
from cpc_fast.training.run_folder import (
    METRICS_NAME,
    SUMMARY_NAME,
    prepare_run_folder,
    run_record,
)
from cpc_fast.training.seeds import derive_seed
from cpc_fast.training.step import (
    autocast_dtype,
    compile_forward_loss,
    make_optimizer,
    train_step,
)
from cpc_fast.training.validate import CPCValidator, Every, metric_sums, step_metrics

logger = logging.getLogger(__name__)


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


def pretrain(
    config: PretrainConfig,
    train_set: Dataset,
    valid_set: Dataset | None,
    out_dir: str | Path,
    *,
    env: distributed.DistEnv | None = None,
    progress: bool = True,
    restart: bool = False,
) -> Path:
    """Trains a CPC model on ``train_set`` and returns the run folder.

    Args:
        config: the run (``cpc_fast.config.pretrain.paper()``, ``tiny()`` or your own).
        train_set, valid_set: any datasets of 1-D 16-kHz waveforms (float32/float64 numpy,
            or int16) of any length of at least one 160-sample frame; ``valid_set`` may be
            None or empty (no validation). A dataset with a ``skipped`` list (files left out
            when indexing) has them counted in the summary; ``description`` is recorded.
        out_dir: the run folder. If it holds a checkpoint of the same configuration the run
            resumes from it; a different configuration is an error (``restart`` starts
            over, deleting this module's files there and nothing else).
        env: this process's place in the job; None = :func:`distributed.init` (one process
            on the first GPU, or the CPU; under torchrun, the launched group).
        progress: rank 0 prints a progress bar, info lines and the summary.

    Returns:
        ``out_dir``, holding ``model.safetensors`` (load it with
        :func:`cpc_fast.load_cpc`), ``state.pt``, ``config.json``, ``metrics.csv`` and
        ``summary.json``.
    """
    config.validate()
    own_env = env is None
    if own_env:
        env = distributed.init(1 if torch.cuda.is_available() else 0)
    valid_set = valid_set if valid_set is not None and len(valid_set) > 0 else None
    lock = FolderLock(out_dir)
    try:
        # One run at a time in a folder: a second one is refused while this one lives.
        distributed.on_main_then_broadcast(env, lambda: _claim(Path(out_dir), lock))
        return _train(config, train_set, valid_set, Path(out_dir), env, progress, restart)
    finally:
        lock.release()
        if own_env:
            distributed.shutdown()


def _claim(run_dir: Path, lock: FolderLock) -> None:
    check_writable_folder(run_dir, "`out_dir`")
    lock.acquire()


@dataclass
class _Run:
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


def _train(config, train_set, valid_set, run_dir, env, progress, restart) -> Path:
    console = Console(env, progress)
    # Decoded once into the prepared cache (unless `cache` is off): later epochs and runs
    # read memory-mapped windows. The datasets keep their fingerprints, so the run record
    # is the same either way.
    train_set, valid_set = prepared_sets(config, train_set, valid_set, console)
    resume = distributed.on_main_then_broadcast(
        env,
        lambda: prepare_run_folder(run_dir, run_record(config, train_set, valid_set, env), restart),
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
        torch.manual_seed(derive_seed(config.seed, "init"))
        model = CPCModel(config.model)
    model = model.to(env.device)
    optimizer = make_optimizer(model, config)
    checkpoint = Checkpointer(run_dir, env, save_weights=save_cpc, log=console.info)
    state = Progress()
    if resume:
        state, saved = checkpoint.load(model, optimizer, Progress)
        world_size = saved["world_size"]
        if world_size != env.world_size:
            console.info(
                f"resuming a {world_size}-process run with {env.world_size} processes: the "
                "global batch changes from here on"
            )
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed window shapes
    model = distributed.wrap_ddp(model, env)
    model.train()
    sampler = EpochSampler(
        len(train_set),
        config.batch_size,
        world_size=env.world_size,
        rank=env.rank,
        seed=derive_seed(config.seed, "order"),
    )
    run = _Run(
        config,
        train_set,
        valid_set,
        run_dir,
        env,
        console,
        model,
        optimizer,
        checkpoint,
        sampler,
        autocast_dtype(config, env.device),
    )
    total = _total_steps(state, sampler, config)
    if resume and state.step >= total:
        console.info(
            f"{run_dir}: already complete at step {state.step} "
            "(raise `max_steps` or `epochs` to train longer)"
        )
        if not (run_dir / SUMMARY_NAME).is_file():  # killed before writing it
            _summarise(run, state)
        return run_dir
    if env.is_main:
        # Steps after the checkpoint are trained again: drop what a killed run logged
        # for them (before the logger opens the file for appending).
        truncate_metrics(run_dir / METRICS_NAME, state.step)
        run.metrics = MetricsLogger(run_dir)
    try:
        _announce(run, state, total, resume)
        _loop(run, state, total, last_saved=state.step if resume else -1)
        _summarise(run, state)
        distributed.barrier()
        return run_dir
    finally:
        if run.metrics is not None:
            run.metrics.close()


def _loop(run: _Run, state: Progress, total: int, last_saved: int) -> None:
    """Trains from ``state`` to step ``total``, then validates and saves the last step."""
    config, env = run.config, run.env
    read, valid_read = BatchReader(config, env, run.console), BatchReader(config, env, run.console)
    windows = train_windows(run.train_set, config)
    validate = None
    if run.valid_set is not None:
        valid_windows = train_windows(run.valid_set, config)
        validate = CPCValidator(config, env, run.amp_dtype, valid_windows)
    log_due, valid_due, save_due = (
        Every(config.log_every),
        Every(config.valid_every),
        Every(config.save_every),
    )
    K = config.model.prediction_steps
    window_seconds = config.window_samples / config.model.sample_rate
    # Train-metric sums of the log interval, on the device so that no step waits for the GPU.
    sums = torch.zeros(2 * K + 2, dtype=torch.float64, device=env.device)
    # Throughput counts time in training steps (waiting for data included), not logging,
    # validation or checkpoints: the clock restarts after them.
    interval_audio = interval_seconds = 0.0
    last_validated = -1
    fresh_start, windows_read = state.step == 0, 0

    def kept() -> str:
        where = (
            f"the checkpoint of step {last_saved} in {run.run_dir} is kept"
            if last_saved >= 0
            else f"no checkpoint was written in {run.run_dir}"
        )
        return f"; {where}. Lower `lr`, or let `skip_nonfinite=N` skip such steps"

    compiled = compile_forward_loss(env.device, env.world_size) if config.compile else None
    # NaN/Inf losses and gradients, flagged on the device and checked where the loop syncs.
    guard = NonFiniteGuard(
        env,
        state.step,
        skip=config.skip_nonfinite,
        skipped=state.nonfinite_skipped,
        hint=kept,
        warn=run.console.warn,
    )

    def run_validation() -> dict[str, float]:
        nonlocal last_validated
        state.last_valid, last_validated = validate(run.model, valid_read), state.step
        run.log(state.step, "valid", state.last_valid)
        return state.last_valid

    def save() -> None:  # callers check for divergence first: never save a diverged model
        nonlocal last_saved
        state.skipped += read.sync() + valid_read.sync()
        state.nonfinite_skipped = guard.skipped
        run.checkpoint.save(run.model, run.optimizer, state)
        last_saved = state.step

    bar = run.console.progress_bar(total, state.step)
    since = time.perf_counter()
    try:
        while state.step < total and state.epoch < config.epochs:
            run.sampler.set_position(state.epoch, state.consumed)
            windows.set_epoch(state.epoch)
            for batch in window_loader(windows, run.sampler, config, env):
                # The batch on the device; unreadable items are warned about and counted.
                wave, weight = read(batch)
                # Forward, InfoNCE with negatives fresh for each step and rank, backward, Adam.
                seed = derive_seed(config.seed, "negatives", state.step, env.rank)
                out = train_step(
                    run.model,
                    run.optimizer,
                    wave,
                    config.model,
                    seed=seed,
                    amp_dtype=run.amp_dtype,
                    weight=weight,
                    guard=guard,
                    compiled=compiled,
                )
                if weight and not guard.last_skipped:
                    sums += metric_sums(out)
                    audio = wave.shape[0] * window_seconds * env.world_size
                    state.audio_seconds += audio
                    interval_audio += audio
                # Advance the position: the epoch order resumes from `consumed`.
                state.step += 1
                state.consumed += run.sampler.global_batch
                epoch_done = state.consumed >= run.sampler.num_items
                if epoch_done:
                    state.epoch, state.consumed = state.epoch + 1, 0
                    # A data set with no readable item is an error, not a run on padding.
                    windows_read += read.require_audio(len(run.train_set))
                elapsed = time.perf_counter() - since
                state.train_seconds += elapsed
                interval_seconds += elapsed
                bar.update(1)
                last = state.step >= total
                # Train metrics, validation and the checkpoint when due (the same on every
                # rank), each after the divergence check: they wait for the device anyway.
                log_now = log_due.due(state.step, False) or last
                valid_now = validate is not None and valid_due.due(state.step, epoch_done or last)
                save_now = save_due.due(state.step, epoch_done or last)
                if log_now or valid_now or save_now:
                    guard.check()
                if log_now:
                    if env.distributed:
                        dist.all_reduce(sums)
                    row = step_metrics(sums, K)
                    row["audio_seconds_per_second"] = interval_audio / max(interval_seconds, 1e-9)
                    row["epoch"] = state.epoch + state.consumed / len(run.train_set)
                    run.log(state.step, "train", row)
                    bar.set_postfix(
                        loss=f"{row['loss']:.3f}",
                        acc=f"{row['accuracy']:.3f}",
                        audio=f"{row['audio_seconds_per_second']:.0f} s/s",
                    )
                    sums.zero_()
                    interval_audio = interval_seconds = 0.0
                if valid_now:
                    values = run_validation()
                    run.console.info(
                        f"step {state.step}: validation loss {values['loss']:.4f}, "
                        f"accuracy {values['accuracy']:.3f}"
                    )
                if save_now:
                    save()
                since = time.perf_counter()
                if last:
                    break
    finally:
        bar.close()
        run.console.bar = None
    guard.check()
    if fresh_start and windows_read + read.count() == 0:  # trained on padding alone
        raise read.no_audio(len(run.train_set))
    if validate is not None and last_validated != state.step:
        run_validation()
    # Only rank-independent conditions may gate a collective (saving all-reduces).
    if last_saved != state.step:
        save()
    state.skipped += read.sync() + valid_read.sync()


def _total_steps(state: Progress, sampler: EpochSampler, config: PretrainConfig) -> int:
    if state.epoch >= config.epochs:
        total = state.step
    else:
        sampler.set_position(state.epoch, state.consumed)
        rest = (
            sampler.steps_remaining()
            + (config.epochs - state.epoch - 1) * sampler.steps_per_epoch()
        )
        total = state.step + rest
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return max(total, state.step)


def _announce(run: _Run, state: Progress, total: int, resume: bool) -> None:
    config, env = run.config, run.env
    where = f"resuming at step {state.step}" if resume else "starting"
    per_step = config.batch_size * env.world_size
    run.console.info(
        f"{where}: {len(run.train_set)} training utterances, {run.sampler.steps_per_epoch()} "
        f"steps/epoch of {env.world_size} x {config.batch_size} windows of "
        f"{config.window_seconds:g} s ({per_step * config.window_seconds:g} s of audio/step), "
        f"{total} steps in all, on {env.device}"
        + (f" with {run.amp_dtype} autocast" if run.amp_dtype is not None else "")
    )
    skipped = getattr(run.train_set, "skipped", [])
    if skipped:
        run.console.info(f"{len(skipped)} files were skipped while indexing")
    conversions = getattr(run.train_set, "conversions", None)
    if conversions is not None and conversions.summary():
        run.console.info(conversions.summary())


def _summarise(run: _Run, state: Progress) -> None:
    """Writes summary.json and prints the summary line (rank 0)."""
    summary = {
        "steps": state.step,
        "epochs": state.epoch + state.consumed / len(run.train_set),
        "audio_hours": state.audio_seconds / 3600.0,
        "skipped_files_indexing": len(getattr(run.train_set, "skipped", [])),
        "skipped_files_reading": state.skipped,
        "train_seconds": state.train_seconds,
        "audio_seconds_per_second": state.audio_seconds / max(state.train_seconds, 1e-9),
        "world_size": run.env.world_size,
        "device": str(run.env.device),
        "final_validation": state.last_valid,
    }
    if not run.env.is_main:
        return
    write_json(run.run_dir / SUMMARY_NAME, summary)
    valid = state.last_valid
    run.console.info(
        f"done: {summary['steps']} steps, {summary['epochs']:.2f} epochs, "
        f"{summary['audio_hours']:.2f} h of audio at "
        f"{summary['audio_seconds_per_second']:.0f} s/s, skipped files: "
        f"{summary['skipped_files_indexing']} when indexing + "
        f"{summary['skipped_files_reading']} when reading"
        + (
            f"; validation loss {valid['loss']:.4f}, accuracy {valid['accuracy']:.3f}"
            if valid
            else ""
        )
        + f" -> {run.run_dir}"
    )


__all__ = ["Progress", "pretrain"]
