"""Windows, batches and sampling for CPC pre-training, and opening the configured corpus.

* :class:`WindowDataset` wraps any dataset of 1-D waveforms: it cuts utterances longer than
  the window (at the start, or at an offset drawn from ``(seed, epoch, index)``), and turns
  a file that cannot be read (or is too short, or holds NaNs) into a sentinel carrying the
  reason instead of an exception, so one bad file never ends an epoch in a worker; the
  training loop warns and counts, or stops with that one line under ``--strict``.
* :class:`WindowCollate` drops the sentinels and repeat-pads the rest to the window with
  the C++ batching (through :class:`cpc_fast.data.collate.CPCCollate`): ``(B, window)``
  float32.
* :class:`EpochSampler` gives every rank its block of each global batch. The order of an
  epoch depends on ``(seed, epoch)`` only, and global batch ``j`` holds positions
  ``[j*B*W, (j+1)*B*W)`` of it, so a run resumes mid-epoch from "how many positions were
  consumed", even with another world size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from cpc_fast.errors import UserInputError
from cpc_fast.training.config import DataConfig

Item = tuple[np.ndarray | None, str | None]  # (window, None) or (None, why it was skipped)


class WindowDataset(Dataset):
    """``dataset[i]`` cut to at most ``window`` samples -> ``(wave, None)`` or ``(None, why)``.

    Args:
        dataset: yields 1-D float32/float64/int16 numpy waveforms (any length).
        window: samples per training window.
        crop: "start" (cut at the window length) or "random" (an offset drawn from
            ``(seed, epoch, index)``; change the epoch with :meth:`set_epoch`).
        min_samples: shorter items are skipped (one frame, 160 samples, at least).
    """

    def __init__(
        self,
        dataset: Dataset,
        window: int,
        *,
        crop: str = "start",
        seed: int = 0,
        min_samples: int = 160,
    ) -> None:
        if crop not in ("start", "random"):
            raise UserInputError(f"crop must be 'start' or 'random', got {crop!r}")
        self.dataset = dataset
        self.window = window
        self.crop = crop
        self.seed = seed
        self.min_samples = min_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Picks the epoch's random crops (before the DataLoader iterator is created)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def _name(self, index: int) -> str:
        items = getattr(self.dataset, "items", None)
        if items is not None and hasattr(items[index], "path"):
            return str(items[index].path)
        return f"item {index}"

    def __getitem__(self, index: int) -> Item:
        try:
            wave = self.dataset[index]
        except (UserInputError, OSError) as exc:
            message = str(exc)
            name = self._name(index)
            return None, message if name in message else f"{name}: {message}"
        wave = np.asarray(wave)
        if wave.ndim != 1:
            raise UserInputError(
                f"{self._name(index)}: expected a 1-D waveform, got shape {wave.shape}"
            )
        if wave.dtype != np.int16 and wave.dtype != np.float32:
            if not np.issubdtype(wave.dtype, np.floating):
                raise UserInputError(
                    f"{self._name(index)}: expected float or int16 samples, got {wave.dtype}"
                )
            wave = wave.astype(np.float32)
        problem = None
        if wave.shape[0] < self.min_samples:
            problem = f"too short: {wave.shape[0]} samples, the minimum is {self.min_samples}"
        elif wave.dtype != np.int16 and not np.isfinite(wave).all():
            problem = "contains NaN or infinite samples"
        if problem is not None:
            return None, f"{self._name(index)}: {problem}"
        excess = wave.shape[0] - self.window
        if excess > 0:
            offset = 0
            if self.crop == "random":
                rng = np.random.default_rng([self.seed, self.epoch, index])
                offset = int(rng.integers(0, excess + 1))
            wave = wave[offset : offset + self.window]
        return wave, None


class WindowCollate:
    """Items of :class:`WindowDataset` -> ``{"wave": (B', window) float32 | None,
    "skipped": [why, ...]}`` where B' counts the items that were not skipped.

    Shorter windows are repeat-padded (the paper: padded by repeating themselves) by
    :class:`~cpc_fast.data.collate.CPCCollate` with offsets "start" (the items are already
    cut where :class:`WindowDataset` chose), which in a worker writes the batch straight into
    shared memory. Picklable, so it runs in DataLoader workers.
    """

    def __init__(self, window: int, *, normalize: bool = False) -> None:
        from cpc_fast.data.collate import CPCCollate

        self.window = window
        self._pad = CPCCollate(window, offsets="start", normalize=normalize)

    def __call__(self, items: list[Item]) -> dict[str, Any]:
        waves = [w for w, _ in items if w is not None]
        skipped = [why for w, why in items if w is None]
        return {"wave": self._pad(waves) if waves else None, "skipped": skipped}


class EpochSampler(Sampler[int]):
    """Indices for one rank: its ``batch_size`` block of each global batch of an epoch.

    The epoch order is a permutation seeded by ``(seed, epoch)`` (identity without
    ``shuffle``). From position ``consumed`` on, it is cut into global batches of
    ``batch_size * world_size``; the last is filled up by wrapping around the epoch order,
    so every step has full batches on every rank.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_items < 1:
            raise UserInputError("the training set is empty")
        self.num_items = num_items
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.consumed = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def set_position(self, epoch: int, consumed: int = 0) -> None:
        """Where the next iterator starts: ``consumed`` positions into ``epoch``."""
        if not 0 <= consumed < self.num_items:
            raise ValueError(f"consumed must be in [0, {self.num_items}), got {consumed}")
        self.epoch, self.consumed = epoch, consumed

    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_items / self.global_batch)

    def steps_remaining(self) -> int:
        """Steps left in the current epoch from the current position."""
        return math.ceil((self.num_items - self.consumed) / self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def global_batches(self) -> np.ndarray:
        """(steps_remaining, batch_size * world_size) item indices from the position on."""
        order = self.order(self.epoch)
        rest = order[self.consumed :]
        total = self.steps_remaining() * self.global_batch
        padded = np.concatenate([rest, np.resize(order, total - rest.shape[0])])
        return padded.reshape(-1, self.global_batch)

    def __iter__(self) -> Iterator[int]:
        start = self.rank * self.batch_size
        mine = self.global_batches()[:, start : start + self.batch_size]
        return iter(mine.reshape(-1).tolist())

    def __len__(self) -> int:
        return self.steps_remaining() * self.batch_size


class ShardSampler(Sampler[int]):
    """Evaluation order without padding: batch ``j`` of ``range(num_items)`` goes to rank
    ``j % world_size``, so ranks see disjoint items and together all of them once."""

    def __init__(self, num_items: int, batch_size: int, *, world_size: int = 1, rank: int = 0):
        self.num_items = num_items
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank

    def _indices(self) -> list[int]:
        out = []
        for start in range(self.rank * self.batch_size, self.num_items, self.global_batch):
            out.extend(range(start, min(start + self.batch_size, self.num_items)))
        return out

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def detect_format(path: str | os.PathLike) -> str:
    """ "librispeech" when ``path`` is (or holds) the LibriSpeech layout, else "folder"."""
    from cpc_fast.data.librispeech import looks_like_librispeech

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (--data)")
    return "librispeech" if looks_like_librispeech(path) else "folder"


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
    (format detected, path absolute). No ``path`` means the built-in synthetic corpus."""
    fmt = data.format
    if data.path is None:
        if fmt not in (None, "synthetic"):
            raise UserInputError(f"--format {fmt} needs --data PATH")
        fmt = "synthetic"
    elif fmt == "synthetic":
        raise UserInputError("--format synthetic is the built-in corpus: drop --data")
    elif fmt is None:
        fmt = detect_format(data.path)
    resolved = replace(
        data, format=fmt, path=None if data.path is None else str(Path(data.path).resolve())
    )
    if fmt == "synthetic":
        from cpc_fast.data.synthetic import SyntheticSpeechCorpus

        train = SyntheticSpeechCorpus(
            data.synthetic_speakers,
            data.synthetic_utterances,
            data.synthetic_seconds,
            seed,
            sample_rate=sample_rate,
        )
        return train, train.held_out(data.synthetic_valid_utterances), resolved
    common = dict(
        valid_fraction=data.valid_fraction,
        sample_rate=sample_rate,
        min_samples=min_samples,
        strict=strict,
        warn=warn,
    )
    if fmt == "librispeech":
        from cpc_fast.data.librispeech import load_librispeech

        corpus = load_librispeech(
            data.path,
            subset=data.subset,
            max_minutes_per_speaker=data.max_minutes_per_speaker,
            **common,
        )
        return corpus.train, corpus.valid, resolved
    from cpc_fast.data.folder import load_folder

    if data.max_minutes_per_speaker is not None or data.subset is not None:
        raise UserInputError(
            "--max-minutes-per-speaker and --subset apply to LibriSpeech, not to a folder"
        )
    train, valid = load_folder(data.path, **common)
    return train, valid, resolved


__all__ = [
    "EpochSampler",
    "ShardSampler",
    "WindowCollate",
    "WindowDataset",
    "detect_format",
    "open_pretrain_data",
]
