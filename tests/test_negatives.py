"""Negative sampling: range, same sequence, uniformity (chi-square), independence, seeds.

Both samplers are checked: ``sample_negatives`` (torch.randint) and ``philox_negatives``
(the draws the fused kernels make in-kernel; run by Triton's interpreter on CPU).
"""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch

from cpc_fast.errors import UserInputError
from cpc_fast.losses import philox_negatives, sample_negatives

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


def test_bad_sizes_raise():
    with pytest.raises(UserInputError, match="L >= 1"):
        sample_negatives(1, 1, 0, 3)
    with pytest.raises(UserInputError, match="exclude_positive"):
        sample_negatives(1, 1, 1, 3, exclude_positive=True)
