"""From a pre-training configuration to batches: the corpus it names, its windows, loaders.

train, valid, data = open_pretrain_data(config.data, seed=config.seed)  # data: resolved
train, valid = prepared_sets(config, train, valid, console)  # decoded once, memory-mapped
windows = train_windows(train, config)  # (window,) float32 items or skip reasons
loader = window_loader(windows, sampler, config, env)  # {"wave": (B, window), ...}
wave, weight = read(batch)  # BatchReader: (B, window) on the device, skips counted
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from cpc_fast.config.pretrain import DataConfig, PretrainConfig
from cpc_fast.data.corpora import open_pretrain_corpus
from cpc_fast.data.file_index import AudioFileDataset
from cpc_fast.data.prepared import prepare_corpus
from cpc_fast.data.windows import WindowCollate, WindowDataset
from cpc_fast.errors import UserInputError
from cpc_fast.training.console import Console
from cpc_fast.training.distributed import DistEnv
from cpc_fast.training.preemption import ignore_in_helpers


def open_pretrain_data(data: DataConfig, **indexing: Any) -> tuple[Dataset, Dataset, DataConfig]:
    """The training and validation sets that ``data`` describes, and ``data`` resolved
    (format detected, path absolute), as :func:`open_pretrain_corpus` opens them;
    ``indexing`` is that function's other arguments (``seed``, ``sample_rate``,
    ``min_samples``, ``strict``, ``warn``)."""
    train, valid, source = open_pretrain_corpus(**asdict(data), **indexing)
    return train, valid, replace(data, format=source.format, path=source.path)


def prepared_sets(
    config: PretrainConfig, train: Dataset, valid: Dataset | None, console: Console
) -> tuple[Dataset, Dataset | None]:
    """``train`` and ``valid`` read from their prepared caches (built here when missing, by
    ``config.workers`` processes) when ``config.cache`` and they are audio files; other
    datasets (the synthetic corpus, your own) as they are. Every rank calls this: the
    first prepares, the others wait on the cache's lock and then open it."""
    if not config.cache:
        return train, valid
    sets = []
    for dataset in (train, valid):
        if isinstance(dataset, AudioFileDataset) and len(dataset) > 0:
            dataset = prepare_corpus(
                dataset,
                config.cache_dir,
                workers=config.workers,
                progress=console.verbose,
                info=console.info,
            )
        sets.append(dataset)
    return sets[0], sets[1]


def train_windows(dataset: Dataset, config: PretrainConfig) -> WindowDataset:
    """``dataset``'s utterances cut to the configured window (``config.crop``)."""
    return WindowDataset(
        dataset,
        config.window_samples,
        crop=config.crop,
        seed=config.seed,
        min_samples=config.min_samples,
    )


def window_loader(
    windows: WindowDataset, sampler: Sampler[int], config: PretrainConfig, env: DistEnv
) -> DataLoader:
    """Batches of ``config.batch_size`` windows in ``sampler``'s order, repeat-padded by the
    C++ batching in ``config.workers`` worker processes (pinned on CUDA), which ignore the
    preemption signals: the training process decides when to stop."""
    workers = config.workers
    return DataLoader(
        windows,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=WindowCollate(config.window_samples, normalize=config.normalize),
        pin_memory=env.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=ignore_in_helpers if workers > 0 else None,
    )


class BatchReader:
    """Moves batches to the device; warns about and counts the items skipped when read, or
    stops at the first one with ``strict``; raises an environment error (a file that could
    not be opened for want of file descriptors or memory) as the ``OSError`` it is."""

    def __init__(self, config: PretrainConfig, env: DistEnv, console: Console) -> None:
        self.config, self.env, self.console = config, env, console
        self.new_skips = 0  # on this rank since the last sync
        self.windows = 0  # usable windows on this rank since the last count
        self.first_skip: str | None = None

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, float]:
        """The batch's (B, window) waves on the device and its loss weight."""
        for why in batch["skipped"]:
            if isinstance(why, OSError):
                raise why
            if self.config.strict:
                raise UserInputError(f"{why} (with `strict=False` it would be skipped)")
            self.console.warn(f"skipping {why}")
            self.new_skips += 1
            self.first_skip = self.first_skip or why
        wave = batch["wave"]
        if wave is None:  # nothing readable: join the all-reduce with a zero-weight step
            return torch.zeros(1, self.config.window_samples, device=self.env.device), 0.0
        self.windows += wave.shape[0]
        return wave.to(self.env.device, non_blocking=True), 1.0

    def sync(self) -> int:
        """Every rank's skips since the last call, summed (a collective under DDP)."""
        return self._sum("new_skips")

    def count(self) -> int:
        """Every rank's usable windows since the last call, summed (a collective)."""
        return self._sum("windows")

    def require_audio(self, items: int) -> int:
        """:meth:`count`, raising when it is 0: a training set with no usable audio is an
        error, not a run trained on padding. ``items``: the data set's size."""
        count = self.count()
        if count == 0:
            raise self.no_audio(items)
        return count

    def no_audio(self, items: int) -> UserInputError:
        example = f"; the first: {self.first_skip}" if self.first_skip else ""
        return UserInputError(
            f"no usable audio: every training item read ({items} in the data set) was "
            f"skipped{example}"
        )

    def _sum(self, name: str) -> int:
        count = torch.tensor([float(getattr(self, name))], device=self.env.device)
        if self.env.distributed:
            dist.all_reduce(count)
        setattr(self, name, 0)
        return int(count.item())


__all__ = ["BatchReader", "open_pretrain_data", "prepared_sets", "train_windows", "window_loader"]
