"""CPC pre-training: the training loop, DDP, checkpoints and resume.

In Python::

    from cpc_fast.training.pretrain import pretrain, preset
    from cpc_fast.data.synthetic import SyntheticSpeechCorpus

    train = SyntheticSpeechCorpus(8, 24, seconds=(0.5, 1.5))
    run = pretrain(preset("tiny").replace(max_steps=200), train, train.held_out(1), "runs/t")
    model = cpc_fast.load_cpc(run)  # (B, T) -> context (B, floor(T / 160), C)

From the shell (see ``cpc-fast pretrain --help``)::

    cpc-fast pretrain --data /data/LibriSpeech --out runs/ls100 --gpus 8     # one node
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint $HEAD:29500 -m cpc_fast pretrain --data ... --out ...  # two nodes

Every rank trains on its own block of each global batch (``EpochSampler``), DDP averages
the gradients, rank 0 alone reads the checkpoint, logs, shows progress and writes files (the
run folder need not be on a filesystem that other nodes see). The run folder holds
``model.safetensors`` (weights + CPCConfig), ``state.pt`` (weights, optimizer, position,
RNG states; ``torch.load(weights_only=True)``), ``config.json``, ``metrics.csv`` and, at
the end, ``summary.json``. Everything random (initialisation, epoch order, random crops,
negatives) derives from the seed, the step and the rank, so a run killed at any point and
started again with the same command continues from its last checkpoint and ends at the
same step count with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from cpc_fast import __version__
from cpc_fast.data.pretrain_data import EpochSampler, ShardSampler, WindowCollate, WindowDataset
from cpc_fast.errors import UserInputError
from cpc_fast.losses.info_nce import CPCInfoNCEOutput, cpc_info_nce
from cpc_fast.models.cpc import CPCConfig, CPCModel
from cpc_fast.models.loading import save_cpc, unwrap
from cpc_fast.training import distributed
from cpc_fast.training.checkpoint import (
    CONFIG_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    load_state,
    read_json,
    save_state,
    write_json,
)
from cpc_fast.training.config import (
    DataConfig,
    PretrainConfig,
    config_differences,
    paper,
    preset,
    tiny,
)
from cpc_fast.training.distributed import wrap_ddp
from cpc_fast.training.metrics import MetricsLogger, truncate_metrics

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.csv"
_STATE_FORMAT = 1
# What --restart removes: only files this module writes, never the folder itself.
_RUN_FILES = (WEIGHTS_NAME, STATE_NAME, CONFIG_NAME, METRICS_NAME, SUMMARY_NAME)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def autocast_dtype(config: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 on CUDA when ``config.bf16`` is True, or None and the GPU supports it."""
    if device.type != "cuda":
        if config.bf16:
            logger.info("bf16 autocast is for CUDA; training in float32 on %s", device)
        return None
    if config.bf16 is None:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if config.bf16 else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on ``device`` when ``dtype`` is set, else no autocast."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _step_metrics(sums: torch.Tensor, K: int) -> dict[str, float]:
    """Sums [loss, loss_k (K), accuracy_k (K), count] (2K + 2,) -> the means that are logged."""
    values = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
    metrics = {"loss": values[0], "accuracy": float(np.mean(values[K + 1 :]))}
    for k in range(K):
        metrics[f"loss_step_{k + 1}"] = values[1 + k]
        metrics[f"accuracy_step_{k + 1}"] = values[K + 1 + k]
    return metrics


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    wave: torch.Tensor,
    config: CPCConfig,
    *,
    seed: int | None = None,
    neg_index: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    weight: float = 1.0,
) -> CPCInfoNCEOutput:
    """One optimizer step on ``wave`` (B, T); returns the detached loss, per-step losses and
    accuracies. Negatives come from ``neg_index`` (B, K, L, N) if given, else from ``seed``.
    ``weight`` scales the loss (0 for a rank whose batch was entirely unreadable, so it
    still joins the gradient all-reduce)."""
    with _autocast(wave.device, amp_dtype):
        out = model(wave)
    result = cpc_info_nce(
        out.predictions,
        out.z,
        num_negatives=config.num_negatives,
        temperature=config.temperature,
        neg_index=neg_index,
        seed=None if neg_index is not None else seed,
        exclude_positive=config.exclude_positive,
    )
    optimizer.zero_grad(set_to_none=True)
    (result.loss * weight if weight != 1.0 else result.loss).backward()
    optimizer.step()
    return CPCInfoNCEOutput(*(t.detach() for t in result))


def make_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.Adam:
    """Adam with the paper's settings (weight decay as an L2 term, as the paper's PyTorch)."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _rng_state() -> dict[str, Any]:
    """torch/numpy/python RNG states as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (saving the global RNG)
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(  # noqa: NPY002 (restoring the global RNG)
        {
            "bit_generator": "MT19937",
            "state": {
                "key": state["numpy_key"].numpy().astype(np.uint32),
                "pos": state["numpy_pos"],
            },
            "has_gauss": state["numpy_has_gauss"],
            "gauss": state["numpy_gauss"],
        }
    )
    py_state = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((state["python_version"], py_state, state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class _Progress:
    """Counters that survive a restart (saved in state.pt)."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # positions of the current epoch's order already trained on
    audio_seconds: float = 0.0  # window seconds trained on, all ranks
    skipped: int = 0  # items skipped at read time, all ranks
    train_seconds: float = 0.0  # wall time spent in training steps
    last_valid: dict[str, float] = field(default_factory=dict)


class _Reporter:
    """Info lines on rank 0 when ``progress``; warnings always (rank-prefixed under DDP)."""

    def __init__(self, env: distributed.DistEnv, progress: bool) -> None:
        self.env = env
        self.verbose = env.is_main and progress
        self.bar = None

    def info(self, message: str) -> None:
        if self.verbose:
            self._write(message, sys.stdout)

    def warn(self, message: str) -> None:
        if self.env.distributed:
            message = f"[rank {self.env.rank}] {message}"
        if self.verbose or (self.env.distributed and not self.env.is_main):
            self._write(f"warning: {message}", sys.stderr)
        else:
            logger.warning(message)

    def _write(self, message: str, stream) -> None:
        from tqdm.auto import tqdm

        if self.bar is not None:
            tqdm.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)


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
        config: the run (:func:`paper`, :func:`tiny` or your own :class:`PretrainConfig`).
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
    try:
        return _Trainer(config, train_set, valid_set, Path(out_dir), env, progress).run(restart)
    finally:
        if own_env:
            distributed.shutdown()


class _Trainer:
    def __init__(
        self,
        config: PretrainConfig,
        train_set: Dataset,
        valid_set: Dataset | None,
        run_dir: Path,
        env: distributed.DistEnv,
        progress: bool,
    ) -> None:
        self.config = config
        self.train_set = train_set
        self.valid_set = valid_set if valid_set is not None and len(valid_set) > 0 else None
        self.run_dir = run_dir
        self.env = env
        self.report = _Reporter(env, progress)
        self.amp_dtype = autocast_dtype(config, env.device)
        self.window = config.window_samples
        self.state = _Progress()
        self.last_saved = -1
        self.last_validated = -1
        self._new_skips = 0  # read-time skips on this rank since the last all-reduce
        self._acc = torch.zeros(0)  # train-metric sums of the current log interval
        self._interval_audio = 0.0
        self._interval_seconds = 0.0

    # ----------------------------------------------------------------- run folder
    def _run_record(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "train_items": len(self.train_set),
            "valid_items": 0 if self.valid_set is None else len(self.valid_set),
            "train_data": getattr(self.train_set, "description", type(self.train_set).__name__),
            "world_size": self.env.world_size,
            "cpc_fast_version": __version__,
            "torch_version": torch.__version__,
        }

    def _prepare_folder(self, restart: bool) -> bool:
        """Rank 0 checks the folder; every rank learns whether to resume (or the error)."""
        return bool(
            distributed.on_main_then_broadcast(self.env, lambda: self._check_folder(restart))
        )

    def _check_folder(self, restart: bool) -> bool:
        run = self.run_dir
        if run.exists() and not run.is_dir():
            raise UserInputError(f"{run}: --out must be a folder, this is a file")
        run.mkdir(parents=True, exist_ok=True)
        if restart:
            for name in _RUN_FILES:
                (run / name).unlink(missing_ok=True)
            shutil.rmtree(run / "tensorboard", ignore_errors=True)
        record = self._run_record()
        resume = (run / STATE_NAME).is_file()
        if resume:
            if not (run / CONFIG_NAME).is_file():
                raise UserInputError(
                    f"{run}: has {STATE_NAME} but no {CONFIG_NAME}; use --restart to start over"
                )
            saved = read_json(run / CONFIG_NAME)
            diffs = config_differences(saved.get("config", {}), record["config"])
            if saved.get("train_items") != record["train_items"]:
                diffs.append(
                    f"train_items ({saved.get('train_items')} then, {record['train_items']} now)"
                )
            if diffs:
                raise UserInputError(
                    f"{run}: holds a run with a different configuration ({', '.join(diffs)}); "
                    "use another --out, or --restart to overwrite it"
                )
        write_json(run / CONFIG_NAME, record)
        return resume

    # ----------------------------------------------------------------- checkpoints
    def _save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._sync_counters()
        if self.env.is_main:
            st = self.state
            save_cpc(model, self.run_dir / WEIGHTS_NAME)
            save_state(
                self.run_dir / STATE_NAME,
                {
                    "format": _STATE_FORMAT,
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": st.step,
                    "epoch": st.epoch,
                    "consumed": st.consumed,
                    "audio_seconds": st.audio_seconds,
                    "skipped": st.skipped,
                    "train_seconds": st.train_seconds,
                    "last_valid": dict(st.last_valid),
                    "world_size": self.env.world_size,
                    "rng": _rng_state(),
                },
            )
        self.last_saved = self.state.step

    def _load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Rank 0 reads state.pt and sends it to every rank (no shared filesystem needed)."""
        saved = distributed.on_main_then_broadcast(self.env, self._read_state)
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        self.state = _Progress(
            step=int(saved["step"]),
            epoch=int(saved["epoch"]),
            consumed=int(saved["consumed"]),
            audio_seconds=float(saved["audio_seconds"]),
            skipped=int(saved["skipped"]),
            train_seconds=float(saved["train_seconds"]),
            last_valid=dict(saved["last_valid"]),
        )
        _set_rng_state(saved["rng"])
        self.last_saved = self.state.step
        if saved["world_size"] != self.env.world_size:
            self.report.info(
                f"resuming a {saved['world_size']}-process run with {self.env.world_size} "
                "processes: the global batch changes from here on"
            )

    def _read_state(self) -> dict[str, Any]:
        saved = load_state(self.run_dir / STATE_NAME)
        if saved.get("format") != _STATE_FORMAT:
            raise UserInputError(
                f"{self.run_dir / STATE_NAME}: written by another version; use --restart"
            )
        return saved

    def _sync_counters(self) -> None:
        """Adds every rank's new read-time skips into the shared count."""
        if self.env.distributed:
            local = torch.tensor([float(self._new_skips)], device=self.env.device)
            dist.all_reduce(local)
            self.state.skipped += int(local.item())
        else:
            self.state.skipped += self._new_skips
        self._new_skips = 0

    # ----------------------------------------------------------------- data
    def _windows(self, dataset: Dataset) -> WindowDataset:
        return WindowDataset(
            dataset,
            self.window,
            crop=self.config.crop,
            seed=self.config.seed,
            min_samples=self.config.min_samples,
        )

    def _loader(self, dataset: Dataset, sampler, batch_size: int) -> DataLoader:
        workers = self.config.workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=WindowCollate(self.window, normalize=self.config.normalize),
            pin_memory=self.env.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
        )

    def _take(self, batch: dict[str, Any]) -> tuple[torch.Tensor, float]:
        """The batch on the device and its loss weight, after reporting skipped items."""
        for why in batch["skipped"]:
            if self.config.strict:
                raise UserInputError(f"{why} (without --strict it would be skipped)")
            self.report.warn(f"skipping {why}")
            self._new_skips += 1
        wave = batch["wave"]
        if wave is None:  # nothing readable: join the all-reduce with a zero-weight step
            return torch.zeros(1, self.window, device=self.env.device), 0.0
        return wave.to(self.env.device, non_blocking=True), 1.0

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def _validate(self, model: torch.nn.Module) -> dict[str, float]:
        cfg, env = self.config, self.env
        net = unwrap(model)
        net.eval()
        sampler = ShardSampler(
            len(self.valid_set), cfg.batch_size, world_size=env.world_size, rank=env.rank
        )
        loader = self._loader(self._windows(self.valid_set), sampler, cfg.batch_size)
        K = cfg.model.prediction_steps
        sums = torch.zeros(2 * K + 2, dtype=torch.float64, device=env.device)
        for j, batch in enumerate(loader):
            wave, weight = self._take(batch)
            if weight == 0.0:
                continue
            with _autocast(env.device, self.amp_dtype):
                out = net(wave)
            # Fixed negatives per batch: validations at different steps are comparable.
            res = cpc_info_nce(
                out.predictions,
                out.z,
                num_negatives=cfg.model.num_negatives,
                temperature=cfg.model.temperature,
                seed=derive_seed(cfg.seed, "valid", j * env.world_size + env.rank),
                exclude_positive=cfg.model.exclude_positive,
            )
            rows = wave.shape[0]
            sums += torch.cat(
                [
                    res.loss.reshape(1) * rows,
                    res.loss_per_step * rows,
                    res.accuracy_per_step * rows,
                    torch.tensor([rows], device=env.device),
                ]
            ).double()
        if env.distributed:
            dist.all_reduce(sums)
        net.train()
        metrics = _step_metrics(sums, K)
        self.last_validated = self.state.step
        self.state.last_valid = metrics
        return metrics

    # ----------------------------------------------------------------- the loop
    def run(self, restart: bool) -> Path:
        cfg, env = self.config, self.env
        resume = self._prepare_folder(restart)
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            model = CPCModel(cfg.model)
        model = model.to(env.device)
        optimizer = make_optimizer(model, cfg)
        if resume:
            self._load(model, optimizer)
        if env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed window shapes
        model = wrap_ddp(model, env)
        model.train()

        sampler = EpochSampler(
            len(self.train_set),
            cfg.batch_size,
            world_size=env.world_size,
            rank=env.rank,
            seed=derive_seed(cfg.seed, "order"),
        )
        train_windows = self._windows(self.train_set)
        total = self._total_steps(sampler)
        if resume and self.state.step >= total:
            self.report.info(
                f"{self.run_dir}: already complete at step {self.state.step} "
                "(raise --max-steps or --epochs to train longer)"
            )
            if not (self.run_dir / SUMMARY_NAME).is_file():  # killed before writing it
                self._summarise()
            return self.run_dir
        metrics = None
        if env.is_main:
            # Steps after the checkpoint are trained again: drop what a killed run logged
            # for them (before the logger opens the file for appending).
            truncate_metrics(self.run_dir / METRICS_NAME, self.state.step)
            metrics = MetricsLogger(self.run_dir)
        self._announce(resume, sampler, total)
        try:
            self._loop(model, optimizer, sampler, train_windows, total, metrics)
            return self._finish(model, optimizer, metrics)
        finally:
            if metrics is not None:
                metrics.close()

    def _total_steps(self, sampler: EpochSampler) -> int:
        st, cfg = self.state, self.config
        if st.epoch >= cfg.epochs:
            total = st.step
        else:
            sampler.set_position(st.epoch, st.consumed)
            rest = (
                sampler.steps_remaining() + (cfg.epochs - st.epoch - 1) * sampler.steps_per_epoch()
            )
            total = st.step + rest
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        return max(total, st.step)

    def _announce(self, resume: bool, sampler: EpochSampler, total: int) -> None:
        cfg, st = self.config, self.state
        where = f"resuming at step {st.step}" if resume else "starting"
        per_step = cfg.batch_size * self.env.world_size
        self.report.info(
            f"{where}: {len(self.train_set)} training utterances, {sampler.steps_per_epoch()} "
            f"steps/epoch of {self.env.world_size} x {cfg.batch_size} windows of "
            f"{cfg.window_seconds:g} s ({per_step * cfg.window_seconds:g} s of audio/step), "
            f"{total} steps in all, on {self.env.device}"
            + (f" with {self.amp_dtype} autocast" if self.amp_dtype is not None else "")
        )
        skipped = getattr(self.train_set, "skipped", [])
        if skipped:
            self.report.info(f"{len(skipped)} files were skipped while indexing")

    def _loop(self, model, optimizer, sampler, train_windows, total, metrics) -> None:
        from tqdm.auto import tqdm

        cfg, env, st = self.config, self.env, self.state
        bar = tqdm(
            total=total,
            initial=st.step,
            unit="step",
            dynamic_ncols=True,
            disable=not self.report.verbose,
        )
        self.report.bar = bar if self.report.verbose else None
        window_seconds = self.window / cfg.model.sample_rate
        # Per-log-interval sums of [loss, loss_k..., accuracy_k..., steps], on the device so
        # that no step waits for the GPU.
        self._acc = torch.zeros(2 * cfg.model.prediction_steps + 2, dtype=torch.float64)
        self._acc = self._acc.to(env.device)
        # Throughput: training time includes waiting for data, not logging, validation or
        # checkpoints (the clock restarts after them).
        self._interval_audio, self._interval_seconds = 0.0, 0.0
        since = time.perf_counter()
        try:
            while st.step < total and st.epoch < cfg.epochs:
                sampler.set_position(st.epoch, st.consumed)
                train_windows.set_epoch(st.epoch)
                for batch in self._loader(train_windows, sampler, cfg.batch_size):
                    wave, weight = self._take(batch)
                    out = train_step(
                        model,
                        optimizer,
                        wave,
                        cfg.model,
                        seed=derive_seed(cfg.seed, "negatives", st.step, env.rank),
                        amp_dtype=self.amp_dtype,
                        weight=weight,
                    )
                    if weight:
                        self._accumulate(out)
                        audio = wave.shape[0] * window_seconds * env.world_size
                        st.audio_seconds += audio
                        self._interval_audio += audio
                    st.step += 1
                    st.consumed += sampler.global_batch
                    epoch_done = st.consumed >= sampler.num_items
                    if epoch_done:
                        st.epoch, st.consumed = st.epoch + 1, 0
                    elapsed = time.perf_counter() - since
                    st.train_seconds += elapsed
                    self._interval_seconds += elapsed
                    bar.update(1)
                    self._events(model, optimizer, metrics, bar, epoch_done, st.step >= total)
                    since = time.perf_counter()
                    if st.step >= total:
                        break
        finally:
            bar.close()
            self.report.bar = None

    def _accumulate(self, out: CPCInfoNCEOutput) -> None:
        one = torch.ones(1, device=self._acc.device)
        parts = [out.loss.reshape(1), out.loss_per_step, out.accuracy_per_step, one]
        self._acc += torch.cat(parts).double()

    def _events(self, model, optimizer, metrics, bar, epoch_done: bool, last: bool) -> None:
        """Logging, validation and checkpoints due after a step (the same on every rank)."""
        cfg, step = self.config, self.state.step
        if step % cfg.log_every == 0 or last:
            speed = self._interval_audio / max(self._interval_seconds, 1e-9)
            self._log_train(self._acc, speed, metrics, bar)
            self._acc.zero_()
            self._interval_audio, self._interval_seconds = 0.0, 0.0
        boundary = epoch_done or last
        due = (cfg.valid_every and step % cfg.valid_every == 0) or (
            not cfg.valid_every and boundary
        )
        if self.valid_set is not None and due:
            values = self._validate(model)
            if metrics is not None:
                metrics.log(step, "valid", values)
            self.report.info(
                f"step {step}: validation loss {values['loss']:.4f}, "
                f"accuracy {values['accuracy']:.3f}"
            )
        if (cfg.save_every and step % cfg.save_every == 0) or (not cfg.save_every and boundary):
            self._save(model, optimizer)

    def _log_train(self, acc: torch.Tensor, speed: float, metrics, bar) -> None:
        if self.env.distributed:
            dist.all_reduce(acc)
        row = _step_metrics(acc, self.config.model.prediction_steps)
        row["audio_seconds_per_second"] = speed
        row["epoch"] = self.state.epoch + self.state.consumed / len(self.train_set)
        if metrics is not None:
            metrics.log(self.state.step, "train", row)
        bar.set_postfix(
            loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}", audio=f"{speed:.0f} s/s"
        )

    def _finish(self, model, optimizer, metrics) -> Path:
        st = self.state
        if self.valid_set is not None and self.last_validated != st.step:
            values = self._validate(model)
            if metrics is not None:
                metrics.log(st.step, "valid", values)
        # Only rank-independent conditions may gate a collective (_save all-reduces).
        if self.last_saved != st.step:
            self._save(model, optimizer)
        self._sync_counters()
        self._summarise()
        distributed.barrier()
        return self.run_dir

    def _summarise(self) -> None:
        """Writes summary.json and prints the summary line (rank 0)."""
        st = self.state
        summary = {
            "steps": st.step,
            "epochs": st.epoch + st.consumed / len(self.train_set),
            "audio_hours": st.audio_seconds / 3600.0,
            "skipped_files_indexing": len(getattr(self.train_set, "skipped", [])),
            "skipped_files_reading": st.skipped,
            "train_seconds": st.train_seconds,
            "audio_seconds_per_second": st.audio_seconds / max(st.train_seconds, 1e-9),
            "world_size": self.env.world_size,
            "device": str(self.env.device),
            "final_validation": st.last_valid,
        }
        if self.env.is_main:
            write_json(self.run_dir / SUMMARY_NAME, summary)
            valid = st.last_valid
            self.report.info(
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
                + f" -> {self.run_dir}"
            )


__all__ = [
    "DataConfig",
    "PretrainConfig",
    "autocast_dtype",
    "derive_seed",
    "make_optimizer",
    "paper",
    "preset",
    "pretrain",
    "tiny",
    "train_step",
    "wrap_ddp",
]
