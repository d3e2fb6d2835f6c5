"""From a pre-training configuration to batches: the corpus it names, its windows, loaders.

train, valid, data = open_pretrain_data(config.data, seed=config.seed)  # data: resolved
windows = train_windows(train, config)  # (window,) float32 items or skip reasons
loader = window_loader(windows, sampler, config, env)  # {"wave": (B, window), ...}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace

from torch.utils.data import DataLoader, Dataset, Sampler

from cpc_fast.config.pretrain import DataConfig, PretrainConfig
from cpc_fast.data.corpora import open_pretrain_corpus
from cpc_fast.data.windows import WindowCollate, WindowDataset
from cpc_fast.training.distributed import DistEnv


def open_pretrain_data(
    data: DataConfig,
    *,
    seed: int = 0,
    sample_rate: int = 16000,
    min_samples: int = 160,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[Dataset, Dataset, DataConfig]:
    """The training and validation sets that ``data`` describes, and ``data`` resolved
    (format detected, path absolute), as :func:`open_pretrain_corpus` opens them."""
    train, valid, source = open_pretrain_corpus(
        **asdict(data),
        seed=seed,
        sample_rate=sample_rate,
        min_samples=min_samples,
        strict=strict,
        warn=warn,
    )
    return train, valid, replace(data, format=source.format, path=source.path)


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
    C++ batching in ``config.workers`` worker processes (pinned on CUDA)."""
    workers = config.workers
    return DataLoader(
        windows,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=WindowCollate(config.window_samples, normalize=config.normalize),
        pin_memory=env.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )


__all__ = ["open_pretrain_data", "train_windows", "window_loader"]
