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
from pathlib import Path

import torch
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
from cpc_fast.training.data import prepared_sets
from cpc_fast.training.loop import Progress, Run, train_loop
from cpc_fast.training.precision import autocast_dtype
from cpc_fast.training.run_folder import (
    METRICS_NAME,
    SUMMARY_NAME,
    prepare_run_folder,
    run_record,
)
from cpc_fast.training.seeds import derive_seed
from cpc_fast.training.step import make_optimizer

logger = logging.getLogger(__name__)


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
    run = Run(
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
        train_loop(run, state, total, last_saved=state.step if resume else -1)
        _summarise(run, state)
        distributed.barrier()
        return run_dir
    finally:
        if run.metrics is not None:
            run.metrics.close()


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


def _announce(run: Run, state: Progress, total: int, resume: bool) -> None:
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


def _summarise(run: Run, state: Progress) -> None:
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
