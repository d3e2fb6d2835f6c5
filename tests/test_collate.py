"""CPCCollate and PadCollate, alone and inside DataLoader worker processes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cpc_fast.data.collate import CPCCollate, PadCollate

# Without an accelerator torch ignores pin_memory=True with this warning; the loaders below
# still take the pinning code path, which is what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")


class _Ramps(Dataset):
    """Item i: a ramp 0, 1, 2, ... of a length given by ``sizes[i]`` (sample value = index)."""

    def __init__(self, sizes, dtype=np.float32, label=False):
        self.sizes = sizes
        self.dtype = dtype
        self.label = label

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        wave = np.arange(self.sizes[i]).astype(self.dtype)
        return (wave, i, f"utt{i}") if self.label else wave


def _loader(dataset, collate, workers, batch_size=4):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=True,
        collate_fn=collate,
        persistent_workers=False,
    )


def test_cpc_collate_crops_long_and_repeats_short_utterances():
    collate = CPCCollate(length=1000, offsets="random", seed=3)
    batch = collate([np.arange(400, dtype=np.float32), np.arange(5000, dtype=np.int16)])
    assert batch.shape == (2, 1000) and batch.dtype == torch.float32
    np.testing.assert_array_equal(batch[0].numpy(), np.arange(1000) % 400)
    offset = int(round(batch[1, 0].item() * 32768))
    assert 0 <= offset <= 4000
    np.testing.assert_allclose(batch[1].numpy() * 32768, np.arange(offset, offset + 1000))
    start = CPCCollate(length=1000, offsets="start")([np.arange(5000, dtype=np.float32)])
    np.testing.assert_array_equal(start[0].numpy(), np.arange(1000))


def test_cpc_collate_streams_are_reproducible_and_distinct():
    waves = [np.arange(100_000, dtype=np.float32)] * 6
    first = CPCCollate(length=100, seed=11)
    again = CPCCollate(length=100, seed=11)
    a1, a2 = first(waves), first(waves)
    np.testing.assert_array_equal(a1, again(waves))
    np.testing.assert_array_equal(a2, again(waves))
    assert not torch.equal(a1, a2)  # the call counter moves the stream on
    first.set_epoch(1)
    assert not torch.equal(first(waves), a1)
    first.set_epoch(0)
    np.testing.assert_array_equal(first(waves), a1)  # an epoch replays exactly
    assert not torch.equal(CPCCollate(length=100, seed=12)(waves), a1)
    clone = pickle.loads(pickle.dumps(again))
    np.testing.assert_array_equal(clone(waves), again(waves))


def test_cpc_collate_in_workers_with_pinned_memory():
    dataset = _Ramps([50_000] * 16)  # long ramps: the first sample of a row is its offset
    collate = CPCCollate(length=1000, seed=5)
    runs = []
    for _ in range(2):
        batches = list(_loader(dataset, collate, workers=2))
        assert [b.shape for b in batches] == [(4, 1000)] * 4
        for b in batches:
            assert b.dtype == torch.float32
            np.testing.assert_array_equal(
                b.numpy() - b[:, :1].numpy(), np.tile(np.arange(1000), (4, 1))
            )
        runs.append(torch.cat(batches))
    np.testing.assert_array_equal(runs[0], runs[1])  # reproducible across loader runs
    offsets = runs[0][:, 0].tolist()
    assert len(set(offsets)) == len(offsets)  # the two workers never repeat each other
    serial = torch.cat(list(_loader(dataset, collate, workers=0)))
    assert not torch.equal(serial, runs[0])  # worker streams differ from the main process's


def test_collate_uses_one_thread_and_shared_memory_in_workers():
    class _Probe(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.arange(20_000, dtype=np.float32)

    def probe(items):
        from cpc_fast.data import batching

        batch = CPCCollate(length=1000, offsets="start")(items)
        return batch, torch.tensor([batching.default_num_threads()]), batch.is_shared()

    batch, threads, shared = next(
        iter(DataLoader(_Probe(), batch_size=2, num_workers=1, collate_fn=probe))
    )
    assert threads.item() == 1 and shared
    np.testing.assert_array_equal(batch[1], np.arange(1000))


def test_pad_collate_returns_batch_lengths_and_collated_extras():
    collate = PadCollate(multiple_of=160)
    items = [(np.arange(n, dtype=np.float32), i, f"utt{i}") for i, n in enumerate((170, 30, 320))]
    batch, lengths, labels, names = collate(items)
    assert batch.shape == (3, 320) and lengths.dtype == torch.int64
    assert lengths.tolist() == [170, 30, 320]
    assert labels.tolist() == [0, 1, 2] and names == ["utt0", "utt1", "utt2"]
    for row, n in zip(batch, lengths.tolist(), strict=True):
        np.testing.assert_array_equal(row[:n].numpy(), np.arange(n))
        assert not row[n:].any()
    plain_batch, plain_lengths = collate([np.ones(5, np.int16)])
    assert plain_batch.shape == (1, 160) and plain_lengths.tolist() == [5]
    normalized, _ = PadCollate(multiple_of=1, normalize=True)([np.arange(10, dtype=np.float32)])
    assert abs(normalized.mean().item()) < 1e-6


def test_pad_collate_in_workers():
    sizes = [100, 900, 333, 160, 2000, 1, 640, 161]
    batches = list(_loader(_Ramps(sizes, np.int16, label=True), PadCollate(160), workers=2))
    assert len(batches) == 2
    batch, lengths, labels, names = batches[1]
    assert lengths.tolist() == sizes[4:] and labels.tolist() == [4, 5, 6, 7]
    assert batch.shape == (4, 2080) and names == ["utt4", "utt5", "utt6", "utt7"]
    np.testing.assert_array_equal(batch[2, :640].numpy() * 32768, np.arange(640))


def test_collate_errors_name_the_item():
    with pytest.raises(ValueError, match=r"waves\[1\]: empty waveform"):
        CPCCollate(length=10)([np.ones(3, np.float32), np.ones(0, np.float32)])
    with pytest.raises(TypeError, match=r"items\[1\]: expected a tuple of 2 fields"):
        PadCollate()([(np.ones(3, np.float32), 0), np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="the batch is empty"):
        PadCollate()([])
    with pytest.raises(ValueError, match="length must be a positive"):
        CPCCollate(length=0)
    with pytest.raises(ValueError, match="offsets must be 'random' or 'start'"):
        CPCCollate(offsets="middle")
    with pytest.raises(ValueError, match="multiple_of must be a positive"):
        PadCollate(multiple_of=0)
