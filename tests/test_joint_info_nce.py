"""The joint setup's InfoNCE over valid frames: equal to cpc_info_nce on equal lengths, blind
to padding on variable lengths, and negatives drawn inside each utterance; the CPU (padded
scores) and the general (flattened rows) paths give the same loss and gradients."""

from __future__ import annotations

import pytest
import torch

from cpc_fast.errors import UserInputError
from cpc_fast.losses import padded_info_nce
from cpc_fast.losses.info_nce import cpc_info_nce, info_nce
from cpc_fast.losses.negatives import padded_negatives, within_sequence_negatives
from cpc_fast.losses.padded_info_nce import (
    masked_cpc_info_nce,
    padded_cpc_info_nce,
    valid_row_mask,
    valid_rows,
)

B, K, L, D, N = 3, 4, 11, 8, 5


def test_equals_cpc_info_nce_on_equal_lengths() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(B, K, L, D, generator=g, dtype=torch.float64)
    z = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    frames = torch.randint(0, L, (B, K, L, N), generator=g)
    rows = valid_rows(pred, z, torch.full((B,), L))
    b, k, t = (pred.new_zeros(B, K, L).bool() | _row_mask(L)).nonzero(as_tuple=True)
    assert torch.equal(rows.row_sequence, b)
    neg_index = b.unsqueeze(1) * L + frames[b, k, t]  # the same negatives, as key rows
    ours = masked_cpc_info_nce(pred, z, torch.full((B,), L), neg_index=neg_index)
    theirs = cpc_info_nce(pred, z, num_negatives=N, neg_index=frames).loss
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-10, atol=1e-10)


def _row_mask(length: int) -> torch.Tensor:
    t = torch.arange(L).view(1, 1, L)
    k = torch.arange(K).view(1, K, 1)
    return (t + k + 1 < length).expand(B, K, L)


def test_padding_never_leaks() -> None:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([11, 6, 9])
    pred = torch.randn(B, K, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(B, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    rows = valid_rows(pred, z, lengths)
    neg = within_sequence_negatives(rows, N, generator=g)
    loss = masked_cpc_info_nce(pred, z, lengths, neg_index=neg)
    loss.backward()
    loss = loss.detach()
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(z.grad[b, n:] == 0)  # padded frames are never candidates
        for k in range(K):
            assert torch.all(pred.grad[b, k, max(n - k - 1, 0) :] == 0)  # nor queries
    # Per-sequence losses, each on its unpadded tensors, weighted by their row counts.
    total, count = 0.0, 0
    for b, n in enumerate(lengths.tolist()):
        sel = rows.row_sequence == b
        m = int(sel.sum())
        sub = masked_cpc_info_nce(
            pred[b : b + 1, :, :n].detach(),
            z[b : b + 1, :n].detach(),
            torch.tensor([n]),
            neg_index=neg[sel] - int(rows.offsets[b]),
        )
        total += float(sub) * m
        count += m
    assert abs(loss.item() - total / count) < 1e-10


def test_negatives_stay_in_their_sequence() -> None:
    lengths = torch.tensor([11, 3, 7])
    pred, z = torch.randn(B, K, L, D), torch.randn(B, L, D)
    rows = valid_rows(pred, z, lengths)
    for exclude in (False, True):
        neg = within_sequence_negatives(
            rows, 64, exclude_positive=exclude, generator=torch.Generator().manual_seed(2)
        )
        start = rows.offsets[rows.row_sequence].unsqueeze(1)
        end = start + lengths[rows.row_sequence].unsqueeze(1)
        assert torch.all((neg >= start) & (neg < end))
        hits_positive = (neg == rows.pos_index.unsqueeze(1)).any()
        assert (
            bool(hits_positive) is not exclude
        )  # 64 draws over <= 11 frames hit it unless excluded


def _general_path(pred, z, lengths, neg):
    """The flattened-rows form through the general info_nce (what CUDA runs)."""
    rows = valid_rows(pred, z, lengths)
    return info_nce(rows.queries, rows.keys, rows.pos_index, neg, reduction="mean")


def test_cpu_padded_path_equals_general_path_with_gradients(monkeypatch) -> None:
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([11, 6, 9])
    pred = torch.randn(B, K, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(B, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    neg = within_sequence_negatives(valid_rows(pred, z, lengths), N, generator=g)
    want = _general_path(pred, z, lengths, neg)
    want_grads = torch.autograd.grad(want, (pred, z))
    # Score blocks of every size: all K steps at once, one step at a time, and the
    # memory-lean fallback for batches whose (B, L, L) scores exceed the block budget.
    for budget in (1 << 23, B * L * L, B * L * L - 1):
        monkeypatch.setattr(padded_info_nce, "_SCORE_ELEMENTS", budget)
        got = masked_cpc_info_nce(pred, z, lengths, neg_index=neg)
        got_grads = torch.autograd.grad(got, (pred, z))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_padded_loss_matches_per_utterance_cpc_info_nce() -> None:
    # Independent of the flattened form: each utterance alone through cpc_info_nce, its
    # negatives given as (1, K, L_b, N) frames, the losses weighted by their row counts.
    g = torch.Generator().manual_seed(4)
    lengths = torch.tensor([11, 5, 8])
    pred = torch.randn(B, K, L, D, generator=g, dtype=torch.float64)
    z = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    frames = padded_negatives(lengths, K, L, N, generator=g)
    got = padded_cpc_info_nce(pred, z, lengths, frames)
    total, count = 0.0, 0
    for b, n in enumerate(lengths.tolist()):
        rows = sum(max(n - k - 1, 0) for k in range(K))
        one = cpc_info_nce(
            pred[b : b + 1, :, :n], z[b : b + 1, :n], neg_index=frames[b : b + 1, :, :n]
        )
        total += float(one.loss) * rows
        count += rows
    assert abs(float(got) - total / count) < 1e-12


def test_padded_negatives_are_uniform_within_each_utterance() -> None:
    lengths = torch.tensor([11, 3, 7])
    g = torch.Generator().manual_seed(5)
    mask = valid_row_mask(lengths, K, L)
    for exclude in (False, True):
        frames = padded_negatives(lengths, K, L, 400, exclude_positive=exclude, generator=g)
        assert frames.shape == (B, K, L, 400)
        assert torch.all(frames >= 0) and torch.all(frames < lengths.view(B, 1, 1, 1))
        pos = (torch.arange(L).view(1, L) + torch.arange(1, K + 1).view(K, 1)).view(1, K, L, 1)
        hits = (frames == pos).any(-1)[mask]
        assert bool(hits.any()) is not exclude
        # every allowed frame of the longest utterance is drawn, about equally often
        counts = torch.bincount(frames[0, 0, 0], minlength=11).float()
        allowed = counts[torch.arange(11) != 1] if exclude else counts
        assert torch.all(allowed > 0) and allowed.std() / allowed.mean() < 0.5


def test_negatives_of_another_utterance_are_refused() -> None:
    lengths = torch.tensor([11, 6, 9])
    pred, z = torch.randn(B, K, L, D), torch.randn(B, L, D)
    rows = valid_rows(pred, z, lengths)
    neg = within_sequence_negatives(rows, N, generator=torch.Generator().manual_seed(6))
    neg[0, 0] = int(rows.offsets[1])  # row 0 is utterance 0's; this key is utterance 1's
    with pytest.raises(UserInputError, match="another utterance"):
        masked_cpc_info_nce(pred, z, lengths, neg_index=neg)
