"""The recognizer's feature batches: copied from the cache on the CPU, gathered on a GPU from
the frames uploaded once; both give the same tensors, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpc_fast.emotion.train import FeatureBatches
from cpc_fast.features.cache import FeatureSet


def _batches(seed: int = 0) -> FeatureBatches:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=23)
    lengths[5] = 1  # a one-frame utterance
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = rng.standard_normal((int(offsets[-1]), 7)).astype(np.float32)
    targets = rng.standard_normal((len(lengths), 3))
    return FeatureBatches(FeatureSet(data, offsets), targets)


def _index_sets() -> list[list[int]]:
    rng = np.random.default_rng(1)
    sets = [list(rng.choice(23, size=8, replace=False)) for _ in range(10)]
    return [*sets, [5], [5, 5], list(range(23))]


def _assert_same(copied, gathered, device: str) -> None:
    ((x, frames), y), ((gx, gframes), gy) = copied, gathered
    assert gx.device.type == gframes.device.type == gy.device.type == device
    for a, b in ((x, gx), (frames, gframes), (y, gy)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b.cpu())


def test_on_the_cpu_the_batches_are_copied_from_the_cache() -> None:
    data = _batches()
    assert data.on_device(torch.device("cpu")) is data


def test_gathered_batches_equal_the_copied_ones() -> None:
    """The device path run on the CPU: values, padding (exact zeros), lengths and labels."""
    data = _batches()
    gathered = data._gathered_on(torch.device("cpu"))
    for indices in _index_sets():
        copied = data.batch(indices)
        _assert_same(copied, gathered.batch(indices), "cpu")
        x, frames = copied[0]
        for row, n in enumerate(frames.tolist()):
            assert not x[row, n:].any()  # the padding is zeros in both


@pytest.mark.cuda
def test_on_a_gpu_the_batches_are_gathered_there_with_the_same_values() -> None:
    data = _batches()
    on_gpu = data.on_device(torch.device("cuda"))
    for indices in _index_sets():
        _assert_same(data.batch(indices), on_gpu.batch(indices), "cuda")
