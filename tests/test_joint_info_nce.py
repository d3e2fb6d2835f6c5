"""The joint setup's InfoNCE over valid frames: equal to cpc_info_nce on equal lengths, blind
to padding on variable lengths, and negatives drawn inside each utterance."""

from __future__ import annotations

import torch

from cpc_fast.emotion.joint import masked_cpc_info_nce, valid_rows, within_sequence_negatives
from cpc_fast.losses.info_nce import cpc_info_nce

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
