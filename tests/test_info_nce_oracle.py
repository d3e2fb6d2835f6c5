"""The float64 oracle (``info_nce_oracle.py``) on rows computed by hand."""

from __future__ import annotations

import math

import torch
from info_nce_oracle import cpc_flat, oracle_cpc, oracle_rows


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
    assert cpc_flat(1, 2, 2, 4) == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    pred = torch.randn(B, K, L, D, dtype=torch.float64)
    z = torch.randn(B, L, D, dtype=torch.float64)
    neg = torch.zeros(B, K, L, 1, dtype=torch.long)
    loss, per_step, acc, _, _ = oracle_cpc(pred, z, neg)
    assert torch.isnan(per_step[2]) and torch.isnan(acc[2])
    assert torch.isfinite(loss)


def test_oracle_cosine_masking_and_ignored_rows_by_hand():
    q = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0]])
    keys = torch.tensor([[6.0, 8.0], [0.0, 2.0], [6.0, 8.0]])  # rows 0 and 2 equal by value
    pos = torch.tensor([0, 2, -100])
    neg = torch.tensor([[2, 1], [0, 0], [1, 1]])
    loss, correct, scores = oracle_rows(
        q, keys, pos, neg, 0.5, similarity="cosine", mask_duplicates="value"
    )
    # Row 0: cos(q, keys[0]) = 1; keys[2] equals the positive -> masked; cos(q, keys[1]) = 0.8.
    expected = math.log(math.exp(2.0) + math.exp(1.6)) - 2.0
    assert abs(loss[0].item() - expected) < 1e-12 and scores[0, 1] == -math.inf
    # Row 1: both negatives equal the positive by value: loss 0, and correct.
    assert loss[1].item() == 0.0 and correct[1]
    assert loss[2].item() == 0.0 and not correct[2]  # ignored
    loss_i, _, scores_i = oracle_rows(q, keys, pos, neg, mask_duplicates="index")
    assert scores_i[1, 1] > -math.inf and scores_i[0, 1] > -math.inf  # other indices kept


def test_oracle_tie_conventions():
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # key 1 equals key 0 by value
    pos, neg = torch.tensor([0]), torch.tensor([[1, 2]])
    assert not oracle_rows(q, keys, pos, neg)[1].item()
    assert oracle_rows(q, keys, pos, neg, correct_on_tie=True)[1].item()
    assert oracle_rows(q, keys, pos, neg, mask_duplicates="value")[1].item()
