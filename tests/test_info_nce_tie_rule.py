"""``info_nce(..., correct_on_tie="unless_all_tie")``: fairseq's accuracy rule.

fairseq's ``Wav2vecCriterion`` counts a row correct when ``argmax == 0`` and not also
``argmin == 0`` over its N + 1 logits (masked negatives at -inf). The oracle here applies
exactly that to the float64 oracle's scores, on rows built to sit on every edge: a zero
query (all logits tie), every negative at the positive's index (all tie, unmasked), a zero
query with one negative masked (the -inf is the argmin: correct), a tie with the positive
among lower negatives (correct), every negative masked (correct), and random rows.
"""

from __future__ import annotations

import os

import pytest
import torch
from info_nce_oracle import oracle_rows

from cpc_fast import InfoNCELoss, info_nce
from cpc_fast.errors import UserInputError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]


def _edge_rows(similarity, M=40, Nk=30, N=7, D=12):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(M, D, generator=g)
    keys = torch.randn(Nk, D, generator=g)
    keys[5] = keys[4]  # two key rows equal by value
    pos = torch.randint(0, Nk, (M,), generator=g)
    neg = torch.randint(0, Nk, (M, N), generator=g)
    q[0] = 0  # all logits 0
    neg[1] = pos[1]  # every negative is the positive's own row
    q[2] = 0
    pos[2], neg[2] = 4, torch.tensor([5, 7, 8, 9, 10, 11, 12])  # one equal by value
    keys[13] = -keys[6]
    pos[3], neg[3] = 6, torch.tensor([6, 13, 13, 13, 13, 13, 13])  # a tie, the rest below
    q[3] = keys[6]
    pos[4], neg[4] = 4, 5  # every negative equal by value to the positive
    pos[5] = -100  # ignored: never correct
    return q, keys, pos, neg


def _fairseq_rule(scores):
    return (scores.argmax(1) == 0) & (scores.argmin(1) != 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask", ["none", "index", "value"])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_matches_argmax_and_not_argmin(backend, mask, similarity):
    q, keys, pos, neg = _edge_rows(similarity)
    kwargs = {"similarity": similarity, "mask_duplicates": mask, "backend": backend}
    loss, correct = info_nce(
        q.to(DEVICE),
        keys.to(DEVICE),
        pos.to(DEVICE),
        neg.to(DEVICE),
        0.3,
        correct_on_tie="unless_all_tie",
        return_correct=True,
        **kwargs,
    )
    want_loss, _, scores = oracle_rows(
        q, keys, pos, neg, 0.3, similarity=similarity, mask_duplicates=mask
    )
    want = _fairseq_rule(scores) & (pos != -100)
    assert torch.equal(correct.cpu(), want)
    mean = want_loss.sum() / (pos != -100).sum()  # ignored rows leave the mean
    torch.testing.assert_close(loss.cpu().double(), mean, rtol=1e-5, atol=1e-6)
    # The edge rows decide what they were built for.
    assert not want[0] and want[3] and not want[5]
    assert bool(want[1]) == (mask != "none") and bool(want[2]) == (mask == "value")
    assert bool(want[4]) == (mask == "value")
    # The argmax rule alone (correct_on_tie=True) calls the all-tie rows correct.
    _, argmax = info_nce(
        q,
        keys,
        pos,
        neg,
        0.3,
        correct_on_tie=True,
        return_correct=True,
        similarity=similarity,
        mask_duplicates=mask,
    )
    assert argmax[0] and not correct[0]


def test_the_rule_changes_accuracy_only():
    q, keys, pos, neg = _edge_rows("dot")
    q.requires_grad_()
    a = info_nce(q, keys, pos, neg, correct_on_tie="unless_all_tie", reduction="none")
    b = info_nce(q, keys, pos, neg, reduction="none")
    assert torch.equal(a, b)
    (g,) = torch.autograd.grad(a.sum(), [q])
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("value", ["yes", "argmax", 1.0])
def test_bad_rule_names_the_argument(value):
    q, keys, pos, neg = _edge_rows("dot")
    with pytest.raises(UserInputError, match="`correct_on_tie`"):
        info_nce(q, keys, pos, neg, correct_on_tie=value)
    with pytest.raises(UserInputError, match="`correct_on_tie`"):
        InfoNCELoss(correct_on_tie=value)
