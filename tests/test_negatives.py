"""Negative sampling: range, same sequence, uniformity (chi-square), independence, seeds.

Both samplers are checked: ``sample_negatives`` (torch.randint) and ``philox_negatives``
(the draws the fused kernels make in-kernel; run by Triton's interpreter on CPU), and
``sample_negatives`` across the batch (CPC_audio's) and for a window of T < L rows. The
wav2vec 2.0 sampler over masked frames is checked in ``test_wav2vec2.py``.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest
import torch

from cpc_fast.errors import UserInputError
from cpc_fast.losses import philox_negatives, sample_negatives
from cpc_fast.losses.negatives import IGNORE_INDEX

B, K, L, N = 3, 4, 20, 50
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _torch_sampler(seed, exclude=False):
    return sample_negatives(
        B, K, L, N, generator=torch.Generator().manual_seed(seed), exclude_positive=exclude
    )


@functools.cache  # the interpreter is slow; draws are deterministic
def _philox_sampler(seed, exclude=False):
    return philox_negatives(seed, B, K, L, N, device=DEVICE, exclude_positive=exclude).cpu()


SAMPLERS = [
    pytest.param(_torch_sampler, id="torch"),
    pytest.param(_philox_sampler, id="philox", marks=needs_triton),
]


def _chi2_critical(df: int, z: float = 3.29) -> float:
    """Upper quantile of chi-square (Wilson-Hilferty); z = 3.29 is p = 0.0005."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: torch.Tensor) -> float:
    expected = counts.sum().item() / counts.numel()
    return ((counts.double() - expected) ** 2 / expected).sum().item()


def _positions():
    return torch.arange(L).view(1, 1, L, 1) + torch.arange(1, K + 1).view(1, K, 1, 1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_in_range_shape_and_dtype(sampler):
    idx = sampler(0)
    assert idx.shape == (B, K, L, N) and idx.dtype == torch.int64
    assert idx.min() >= 0 and idx.max() < L  # frames of the row's own sequence


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_uniform_over_the_sequence(sampler):
    idx = sampler(1)
    counts = torch.bincount(idx.view(-1), minlength=L)
    assert _chi2(counts) < _chi2_critical(L - 1)
    # Also uniform within each row position: no frame is favoured for particular t.
    per_t = torch.stack([torch.bincount(idx[:, :, t].reshape(-1), minlength=L) for t in range(L)])
    assert _chi2(per_t.view(-1)) < _chi2_critical(L * L - 1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_independent_across_rows_and_draws(sampler):
    idx = sampler(2).double()
    # Two different rows (neighbouring t, neighbouring k, other sequence) draw the same frame
    # at the same draw position with probability 1/L when independent.
    pairs = [
        (idx[:, :, 1:], idx[:, :, :-1]),
        (idx[:, 1:], idx[:, :-1]),
        (idx[1:], idx[:-1]),
        (idx[..., 1:], idx[..., :-1]),
    ]
    for a, b in pairs:
        rate = (a == b).double().mean().item()
        n = a.numel()
        assert abs(rate - 1 / L) < 5 * math.sqrt((1 / L) * (1 - 1 / L) / n), rate
        centred_a, centred_b = a - a.mean(), b - b.mean()
        corr = (centred_a * centred_b).mean() / (centred_a.std() * centred_b.std())
        assert abs(corr.item()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_reproducible_from_a_seed(sampler):
    assert torch.equal(sampler(3), sampler(3))
    assert not torch.equal(sampler(3), sampler(4))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_exclude_positive_never_draws_it_and_stays_uniform(sampler):
    idx = sampler(5, exclude=True)
    pos = _positions()
    assert not (idx == pos).any()
    assert idx.min() >= 0 and idx.max() < L
    # Rows inside the sequence: the rank among the other L - 1 frames is uniform.
    inside = (pos < L).expand_as(idx)
    rank = idx - (idx > pos).long()
    counts = torch.bincount(rank[inside], minlength=L - 1)
    assert _chi2(counts) < _chi2_critical(L - 2)


def test_philox_rows_do_not_depend_on_the_grid_shape():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    # Row (b, k, t) uses counter row * ceil(N / 4) + g: a longer N changes nothing before it
    # only when ceil(N / 4) is unchanged, and a different L re-numbers rows; the same call
    # twice must agree, and draws past N never leak into the next row.
    a = philox_negatives(9, 2, 3, 11, 6, device=DEVICE)
    b = philox_negatives(9, 2, 3, 11, 7, device=DEVICE)
    assert torch.equal(a, b[..., :6])


def _philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC'11; Random123), written from the paper: four uint32
    counter words and two key words (NumPy arrays) -> four uint32 output words."""
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    c = [np.asarray(x, dtype=np.uint64) for x in counter]
    k0, k1 = (np.asarray(x, dtype=np.uint64) for x in key)
    mask = np.uint64(0xFFFFFFFF)
    for r in range(10):
        if r:
            k0, k1 = (k0 + w0) & mask, (k1 + w1) & mask
        p0, p1 = m0 * c[0], m1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1,
             p0 & mask]  # fmt: skip
    return c


def test_philox_reference_matches_random123_known_answers():
    # Random123's kat_vectors for philox4x32_10.
    cases = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ]
    for counter, key, expected in cases:
        assert [int(x) for x in _philox4x32_10(counter, key)] == expected


def _numpy_philox_negatives(seed, B, K, L, N, exclude):
    """The documented draw (kernels/sampling.py), computed without Triton: row (b, k, t) =
    (b K + k) L + t uses counter (row ceil(N/4) + g, 0, 0, 0) and key (seed lo, seed hi);
    output word i of counter g is draw 4g + i, mapped to a frame by (r span) >> 32."""
    groups = (N + 3) // 4
    row = np.arange(B * K * L, dtype=np.uint64).reshape(B, K, L, 1)
    counter = row * np.uint64(groups) + np.arange(groups, dtype=np.uint64)  # (B, K, L, G)
    zero = np.zeros_like(counter)
    key = (np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32))
    words = np.stack(_philox4x32_10([counter, zero, zero, zero], key), -1)  # (B, K, L, G, 4)
    r = words.reshape(B, K, L, 4 * groups)[..., :N]
    span = np.uint64(L - 1 if exclude else L)
    frames = ((r * span) >> np.uint64(32)).astype(np.int64)
    if exclude:
        pos = np.arange(L).reshape(1, 1, L, 1) + np.arange(1, K + 1).reshape(1, K, 1, 1)
        frames += frames >= pos
    return torch.from_numpy(frames)


@needs_triton
@pytest.mark.parametrize("exclude", [False, True])
def test_philox_draws_are_bit_exact_philox4x32_10(exclude):
    # Compiled on a GPU (gpu_check.sh), interpreted on CPU: both must be the same stream.
    # The kernels read the seed as an int64 from the device; seeds >= 2**32 fill the key's
    # high word.
    for seed in (0, 1, 12345, 2**32 + 7, 2**63 - 1):
        got = philox_negatives(seed, 2, 3, 7, 9, device=DEVICE, exclude_positive=exclude)
        assert torch.equal(got.cpu(), _numpy_philox_negatives(seed, 2, 3, 7, 9, exclude)), seed


def test_bad_sizes_raise():
    with pytest.raises(UserInputError, match="`L` >= 1"):
        sample_negatives(1, 1, 0, 3)
    with pytest.raises(UserInputError, match="exclude_positive"):
        sample_negatives(1, 1, 1, 3, exclude_positive=True)


@pytest.mark.parametrize("exclude", [False, True])
def test_across_the_batch_uniform_over_every_frame(exclude):
    T = L - K  # CPC_audio's window
    g = torch.Generator().manual_seed(6)
    idx = sample_negatives(B, K, L, N, generator=g, exclude_positive=exclude, rows=T,
                           across_batch=True)  # fmt: skip
    assert idx.shape == (B, K, T, N) and idx.min() >= 0 and idx.max() < B * L
    pos = _positions()[:, :, :T] + torch.arange(B).view(B, 1, 1, 1) * L
    if exclude:
        assert not (idx == pos).any()
        rank = idx - (idx > pos).long()
        assert _chi2(torch.bincount(rank.view(-1), minlength=B * L - 1)) < _chi2_critical(B * L - 2)
    else:
        assert (idx == pos).any()  # may coincide with the positive, as in CPC_audio
        counts = torch.bincount(idx.view(-1), minlength=B * L)
        assert _chi2(counts) < _chi2_critical(B * L - 1)
    # Another sequence's frames are drawn as often as the row's own.
    other = (idx // L != torch.arange(B).view(B, 1, 1, 1)).double().mean().item()
    assert abs(other - (B - 1) / B) < 0.02


def test_a_window_of_rows_draws_from_all_frames():
    idx = sample_negatives(B, K, L, N, generator=torch.Generator().manual_seed(7), rows=5)
    assert idx.shape == (B, K, 5, N) and idx.max() == L - 1 and idx.min() == 0


def test_one_ignore_index_shared_by_the_library_and_the_kernels():
    from cpc_fast.kernels import indexing, info_nce

    assert IGNORE_INDEX == info_nce.IGNORE_INDEX == indexing.IGNORE.value == -100
