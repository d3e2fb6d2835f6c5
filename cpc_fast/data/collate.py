"""DataLoader collate functions on top of :mod:`cpc_fast.data.batching`.

    loader = DataLoader(waves_dataset, batch_size=8, num_workers=4, pin_memory=True,
                        collate_fn=CPCCollate(seed=0))       # -> (8, 160000) float32
    loader = DataLoader(labelled_dataset, batch_size=8,
                        collate_fn=PadCollate(multiple_of=160))  # -> (batch, lengths, labels)

Both are picklable and work in worker processes. There the batch is written straight into
shared memory (as torch's default collate does), so handing it to the main process costs no
copy, and the C++ batching runs single-threaded (the workers are the parallelism). In the
main process the batch is a tensor view of the numpy array that the batching returns.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from cpc_fast.data import batching

CPC_LENGTH = 160_000  # the paper's 10 s at 16 kHz


class CPCCollate:
    """Waveforms -> the CPC training batch ``(B, length)`` float32.

    An utterance longer than ``length`` is cut at an offset (``"random"``, or ``"start"`` as
    the paper's cut at 10 s); a shorter one is repeated from its start.

    Random offsets are reproducible: batch ``k`` of worker ``w`` on rank ``RANK`` (the
    environment variable torchrun sets) in epoch ``e`` draws from the stream seeded by
    ``(seed, e, RANK, w, k)``, so workers and ranks never share offsets. Call
    :meth:`set_epoch` every epoch (like ``DistributedSampler.set_epoch``) for new offsets
    when the workers are restarted each epoch. ``seed=None`` picks a random seed once.
    """

    def __init__(
        self,
        length: int = CPC_LENGTH,
        offsets: str = "random",
        seed: int | None = None,
        normalize: bool = False,
    ) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise ValueError(f"length must be a positive number of samples, got {length!r}")
        if offsets not in ("random", "start"):
            raise ValueError(f"offsets must be 'random' or 'start', got {offsets!r}")
        self.length = length
        self.offsets = offsets
        self.seed = int(np.random.SeedSequence(seed).entropy)
        self.normalize = bool(normalize)
        self.epoch = 0
        self._calls = 0

    def set_epoch(self, epoch: int) -> None:
        """Starts the offset streams of ``epoch`` (the batch counter restarts at 0)."""
        self.epoch = int(epoch)
        self._calls = 0

    def __call__(self, waves: Sequence[Any]) -> torch.Tensor:
        """B 1-D float32/int16 arrays or tensors -> (B, length) float32 tensor."""
        worker = get_worker_info()
        rng = None
        if self.offsets == "random":
            worker_id = 0 if worker is None else worker.id + 1
            rank = int(os.environ.get("RANK", "0"))
            key = (self.epoch, rank, worker_id, self._calls)
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))
        self._calls += 1
        args = (waves, self.length, self.offsets)
        if worker is None:
            return torch.from_numpy(batching.repeat_pad(*args, rng=rng, normalize=self.normalize))
        out = _shared_batch((len(waves), self.length))
        batching.repeat_pad(*args, rng=rng, normalize=self.normalize, out=out)
        return out


class PadCollate:
    """Variable-length waveforms -> ``(batch (B, T) float32, lengths (B,) int64, *extras)``.

    ``T`` is the longest waveform rounded up to ``multiple_of`` (160 = one CPC frame), the
    rest zero. Items are waveforms, or tuples ``(waveform, extra, ...)``: each extra field is
    collated with torch's ``default_collate`` (labels -> tensors) and returned after
    ``lengths``. ``normalize`` standardises each waveform over its own samples.
    """

    def __init__(self, multiple_of: int = 160, normalize: bool = False) -> None:
        if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of <= 0:
            raise ValueError(f"multiple_of must be a positive integer, got {multiple_of!r}")
        self.multiple_of = multiple_of
        self.normalize = bool(normalize)

    def __call__(self, items: Sequence[Any]) -> tuple[Any, ...]:
        waves, extras = _split_items(items)
        if get_worker_info() is None:
            batch, lengths = batching.pad_collate(waves, self.multiple_of, normalize=self.normalize)
            batch = torch.from_numpy(batch)
        else:
            lengths = batching.wave_lengths(waves)
            width = -(-int(lengths.max()) // self.multiple_of) * self.multiple_of
            batch = _shared_batch((len(waves), width))
            batching.pad_collate(waves, self.multiple_of, normalize=self.normalize, out=batch)
        return (batch, torch.from_numpy(lengths), *(default_collate(list(f)) for f in extras))


def _split_items(items: Sequence[Any]) -> tuple[list[Any], list[tuple[Any, ...]]]:
    """Waveforms and the extra fields (one tuple per field) of a list of items."""
    if len(items) == 0:
        raise ValueError("the batch is empty: need at least one item")
    if not isinstance(items[0], (tuple, list)):
        return list(items), []
    width = len(items[0])
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != width:
            raise TypeError(
                f"items[{i}]: expected a tuple of {width} fields like items[0], got "
                f"{type(item).__name__}"
            )
    waves = [item[0] for item in items]
    return waves, list(zip(*(item[1:] for item in items), strict=True))


def _shared_batch(shape: tuple[int, int]) -> torch.Tensor:
    """An uninitialised float32 tensor in shared memory, as torch's default_collate makes in
    a worker: the worker -> main process hand-over then copies nothing."""
    storage = torch.UntypedStorage._new_shared(shape[0] * shape[1] * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
