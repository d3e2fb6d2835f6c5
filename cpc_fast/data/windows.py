"""Training windows for CPC pre-training, from any dataset of 1-D waveforms.

* :class:`WindowDataset` cuts utterances longer than the window (at the start, or at an
  offset drawn from ``(seed, epoch, index)``), and turns a file that cannot be read (or is
  too short, or holds NaNs) into a sentinel carrying the reason instead of an exception, so
  one bad file never ends an epoch in a worker; the training loop warns and counts, or
  stops with that one line when ``strict``. An error of the machine rather than the file
  (too many open files) travels in the sentinel as the ``OSError`` itself, which the
  training loop raises.
* :class:`WindowCollate` drops the sentinels and repeat-pads the rest to the window with
  the C++ batching (through :class:`cpc_fast.data.collate.CPCCollate`): ``(B,
  window_samples)`` float32.

Cropping has one owner in training: :class:`WindowDataset` alone chooses where a window
starts, and its window is a view (no samples are touched in Python); the collate cuts
nothing (offsets ``"start"``), it copies each view once into the batch, converting int16,
repeating short ones. From a prepared corpus (:mod:`cpc_fast.data.prepared`) the view is of
a memory-mapped shard, so the C++ batching reads the shard directly. (``CPCCollate``'s own
``"random"`` offsets are for batching whole utterances without this module.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from cpc_fast.data.audio import is_environment_error
from cpc_fast.data.collate import CPCCollate
from cpc_fast.errors import UserInputError, naming

CROPS = ("start", "random")
# (window, None), (None, why it was skipped) or (None, the OSError of the machine)
Item = tuple[np.ndarray | None, str | OSError | None]


class WindowDataset(Dataset):
    """``dataset[i]`` cut to at most ``window`` samples -> ``(wave, None)`` or ``(None, why)``.

    Args:
        dataset: yields 1-D float32/float64/int16 numpy waveforms (any length); one with
            ``checked_finite = True`` (a prepared corpus) is not scanned for NaN again.
        window_samples: samples per training window.
        crop: "start" (cut at the window length) or "random" (an offset drawn from
            ``(seed, epoch, index)``; change the epoch with :meth:`set_epoch`).
        min_samples: shorter items are skipped (one frame, 160 samples, at least).
    """

    def __init__(
        self,
        dataset: Dataset,
        window_samples: int,
        *,
        crop: str = "start",
        seed: int = 0,
        min_samples: int = 160,
    ) -> None:
        if crop not in CROPS:
            raise UserInputError(f"crop must be 'start' or 'random', got {crop!r}")
        self.dataset = dataset
        self.window_samples = window_samples
        # a prepared corpus checked every float sample once, when it was written
        self._scan_finite = not getattr(dataset, "checked_finite", False)
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
            if is_environment_error(exc):
                return None, exc
            return None, naming(self._name(index), str(exc))
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
        elif wave.dtype != np.int16 and self._scan_finite and not np.isfinite(wave).all():
            problem = "contains NaN or infinite samples"
        if problem is not None:
            return None, f"{self._name(index)}: {problem}"
        excess = wave.shape[0] - self.window_samples
        if excess > 0:
            offset = 0
            if self.crop == "random":
                rng = np.random.default_rng([self.seed, self.epoch, index])
                offset = int(rng.integers(0, excess + 1))
            wave = wave[offset : offset + self.window_samples]  # a view: nothing copied
        return wave, None


class WindowCollate:
    """Items of :class:`WindowDataset` -> ``{"wave": (B', window_samples) float32 | None,
    "skipped": [why or OSError, ...]}`` where B' counts the items that were not skipped.

    Shorter windows are repeat-padded (the paper: padded by repeating themselves) by
    :class:`~cpc_fast.data.collate.CPCCollate` with offsets "start" (the items are already
    cut where :class:`WindowDataset` chose), which in a worker writes the batch straight into
    shared memory. Picklable, so it runs in DataLoader workers.
    """

    def __init__(self, window_samples: int, *, normalize: bool = False) -> None:
        self.window_samples = window_samples
        # "start": the items are cut already; CPCCollate only pads (its length is ours)
        self._pad = CPCCollate(window_samples, offsets="start", normalize=normalize)

    def __call__(self, items: list[Item]) -> dict[str, Any]:
        waves = [w for w, _ in items if w is not None]
        skipped = [why for w, why in items if w is None]
        return {"wave": self._pad(waves) if waves else None, "skipped": skipped}


__all__ = ["CROPS", "Item", "WindowCollate", "WindowDataset"]
