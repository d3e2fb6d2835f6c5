"""The float64 oracle every InfoNCE test compares against, written from the formula alone.

It shares no code with ``cpc_fast.losses`` or ``cpc_fast.kernels``: rows are flattened by
explicit loops over (b, k, t) and each row's N + 1 scores are plain float64 dot products.
"""

from __future__ import annotations

import math

import torch


def oracle_rows(q, keys, pos, neg, temperature=1.0):
    """q (M, D), keys (Nk, D), pos (M,), neg (M, N) -> float64 loss (M,), correct (M,)."""
    q64, k64 = q.double(), keys.double()
    idx = torch.cat([pos.long().view(-1, 1), neg.long()], 1)  # (M, N + 1)
    scores = (k64[idx] * q64.unsqueeze(1)).sum(-1) / temperature
    loss = torch.logsumexp(scores, 1) - scores[:, 0]
    correct = scores[:, 0] > scores[:, 1:].max(1).values
    return loss, correct, scores


def cpc_flat(B, K, L):
    """Valid (b, k, t) triples in row order."""
    return [(b, k, t) for b in range(B) for k in range(K) for t in range(L) if t + k + 1 < L]


def oracle_cpc(predictions, z, neg_index, temperature=1.0):
    """float64 (loss, loss_per_step, accuracy_per_step, row losses dict) for the CPC form."""
    B, K, L, D = predictions.shape
    rows = cpc_flat(B, K, L)
    q = torch.stack([predictions[b, k, t] for b, k, t in rows])
    keys = z.reshape(B * L, D) if z.is_contiguous() else z.contiguous().view(B * L, D)
    pos = torch.tensor([b * L + t + k + 1 for b, k, t in rows])
    neg = torch.stack([neg_index[b, k, t].long() + b * L for b, k, t in rows])
    loss, correct, _ = oracle_rows(q, keys, pos, neg, temperature)
    step = torch.tensor([k for _, k, _ in rows])
    per_step = torch.stack(
        [
            loss[step == k].mean()
            if (step == k).any()
            else torch.tensor(math.nan, dtype=torch.float64)
            for k in range(K)
        ]
    )
    acc = torch.stack(
        [
            correct[step == k].double().mean()
            if (step == k).any()
            else torch.tensor(math.nan, dtype=torch.float64)
            for k in range(K)
        ]
    )
    return loss.mean(), per_step, acc, loss, correct


def test_oracle_on_a_hand_computed_row():
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss, correct, _ = oracle_rows(q, keys, torch.tensor([0]), torch.tensor([[1, 2]]), 0.5)
    s = torch.tensor([4.0, 0.0, 2.0], dtype=torch.float64)
    expected = math.log(s.exp().sum().item()) - 4.0
    assert abs(loss.item() - expected) < 1e-12
    assert correct.item()


def test_oracle_ties_are_not_correct():
    q = torch.tensor([[1.0, 2.0]])
    keys = torch.tensor([[3.0, 1.0], [0.0, 0.0]])
    loss, correct, _ = oracle_rows(q, keys, torch.tensor([0]), torch.tensor([[1, 0]]))
    assert not correct.item()
    assert abs(loss.item() - math.log(2 + math.exp(-5))) < 1e-12


def test_oracle_cpc_counts_only_rows_inside_the_sequence():
    B, K, L, D = 1, 3, 3, 2
    rows = cpc_flat(B, K, L)
    assert rows == [(0, 0, 0), (0, 0, 1), (0, 1, 0)]
    pred = torch.randn(B, K, L, D, dtype=torch.float64)
    z = torch.randn(B, L, D, dtype=torch.float64)
    neg = torch.zeros(B, K, L, 1, dtype=torch.long)
    loss, per_step, acc, _, _ = oracle_cpc(pred, z, neg)
    assert torch.isnan(per_step[2]) and torch.isnan(acc[2])
    assert torch.isfinite(loss)
