"""Samplers for CPC pre-training: training batches that resume mid-epoch, and evaluation
shards without padding.

:class:`EpochSampler` gives every rank its block of each global batch. The order of an epoch
depends on ``(seed, epoch)`` only, and global batch ``j`` holds positions
``[j*B*W, (j+1)*B*W)`` of it, so a run resumes mid-epoch from "how many positions were
consumed", even with another world size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field

import numpy as np
from torch.utils.data import Sampler

from cpc_fast.errors import UserInputError


@dataclass(eq=False)
class EpochSampler(Sampler[int]):
    """Indices for one rank: its ``batch_size`` block of each global batch of an epoch.

    The epoch order is a permutation seeded by ``(seed, epoch)`` (identity without
    ``shuffle``). From position ``consumed`` on, it is cut into global batches of
    ``batch_size * world_size``; the last is filled up by wrapping around the epoch order,
    so every step has full batches on every rank.
    """

    num_items: int
    batch_size: int
    _: KW_ONLY
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    shuffle: bool = True
    epoch: int = field(default=0, init=False)
    consumed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise UserInputError("the training set is empty")

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


__all__ = ["EpochSampler", "ShardSampler"]
