"""``info_nce``'s modes on both backends against the float64 oracle: cosine similarity,
negatives masked as equal to the positive (by index, by value), ignored rows, the tie
conventions, every reduction; values and every gradient.

Keys are drawn from a tiny codebook, so negatives equal to the positive by value (at other
indices) really occur, as they do in wav2vec 2.0 once its codebook collapses. The fused
kernels run in Triton's interpreter on CPU (``TRITON_INTERPRET=1``), compiled on a GPU.
Low-precision inputs must stay within 2x the error that plain PyTorch makes at that
precision, measured against the same oracle on the same inputs.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from info_nce_oracle import oracle_grads, oracle_rows

from cpc_fast.errors import UserInputError
from cpc_fast.losses import IGNORE_INDEX, InfoNCELoss
from cpc_fast.losses.info_nce import info_nce

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]
MODES = [(s, m) for s in ("dot", "cosine") for m in ("none", "index", "value")]


def _inputs(M=13, Nk=9, D=59, N=7, dtype=torch.float32, seed=0, codebook=3):
    """Queries, keys drawn from ``codebook`` distinct rows, positives (two rows ignored),
    negatives with forced duplicates: row 0 draws its positive's index, row 1 only keys
    equal to its positive by value (all masked in "value" mode), row 2 one key twice."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(M, D, generator=g)
    book = torch.randn(codebook, D, generator=g)
    code = torch.randint(0, codebook, (Nk,), generator=g)
    code[:2] = torch.tensor([0, 1])
    keys = book[code]
    pos = torch.randint(0, Nk, (M,), generator=g)
    neg = torch.randint(0, Nk, (M, N), generator=g)
    neg[0, 0] = pos[0]
    pos[1] = 0
    twins = (code == code[0]).nonzero().view(-1)
    neg[1] = twins[torch.randint(0, len(twins), (N,), generator=g)]
    neg[2, : min(N, 3)] = Nk - 1
    pos[M - 2 :] = IGNORE_INDEX
    return (
        q.to(DEVICE, dtype).requires_grad_(),
        keys.to(DEVICE, dtype).requires_grad_(),
        pos.to(DEVICE),
        neg.to(DEVICE),
    )


def _oracle(q, keys, pos, neg, temperature, **modes):
    def rows(a, b):
        return oracle_rows(a, b, pos.cpu(), neg.cpu(), temperature, **modes)[0]

    value, (eq, ek) = oracle_grads(lambda a, b: rows(a, b).sum(), q, keys)
    loss, correct, _ = oracle_rows(
        q.detach().cpu(), keys.detach().cpu(), pos.cpu(), neg.cpu(), temperature, **modes
    )
    return loss, correct, eq, ek


def _max_err(a, b):
    return (a.detach().cpu().double() - b.cpu().double()).abs().max().item()


def _close(a, b, tol):
    """Max error within ``tol`` relative to the largest expected magnitude (at least 1)."""
    return _max_err(a, b) < tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity, mask", MODES)
def test_modes_match_the_oracle(backend, similarity, mask):
    q, keys, pos, neg = _inputs()
    modes = {"similarity": similarity, "mask_duplicates": mask}
    rows, correct = info_nce(
        q, keys, pos, neg, 0.3, "none", backend=backend, return_correct=True, **modes
    )
    gq, gk = torch.autograd.grad(rows.sum(), [q, keys])
    e_rows, e_correct, eq, ek = _oracle(q, keys, pos, neg, 0.3, **modes)
    assert rows.dtype == torch.float32
    assert _close(rows, e_rows, 1e-5)
    assert torch.equal(correct.cpu(), e_correct)
    assert _close(gq, eq, 1e-5) and _close(gk, ek, 1e-5)
    assert (gq[pos == IGNORE_INDEX] == 0).all()  # ignored rows: exactly no gradient
    if mask == "value":  # row 1: every negative equals its positive by value
        assert rows[1].item() == 0 and correct[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(5, 4, 123, 1), (11, 6, 33, 37)], ids=["N1", "N37"])
def test_odd_shapes_with_cosine_value_masking(backend, shape):
    M, Nk, D, N = shape
    q, keys, pos, neg = _inputs(M, Nk, D, N, seed=3, codebook=2)
    modes = {"similarity": "cosine", "mask_duplicates": "value"}
    rows = info_nce(q, keys, pos, neg, 0.1, "none", backend=backend, **modes)
    gq, gk = torch.autograd.grad(rows.sum(), [q, keys])
    e_rows, _, eq, ek = _oracle(q, keys, pos, neg, 0.1, **modes)
    assert _close(rows, e_rows, 1e-5)
    assert _close(gq, eq, 1e-5) and _close(gk, ek, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_conventions(backend):
    q, keys, pos, neg = _inputs(seed=1)
    for on_tie in (False, True):
        for mask in ("none", "index"):
            _, correct = info_nce(
                q,
                keys,
                pos,
                neg,
                mask_duplicates=mask,
                correct_on_tie=on_tie,
                backend=backend,
                return_correct=True,
            )
            expected = oracle_rows(
                q.detach().cpu(),
                keys.detach().cpu(),
                pos.cpu(),
                neg.cpu(),
                mask_duplicates=mask,
                correct_on_tie=on_tie,
            )[1]
            assert torch.equal(correct.cpu(), expected), (on_tie, mask)
    # Row 0 drew its own positive: a tie, correct only when ties count.
    kwargs = {"backend": backend, "return_correct": True}
    assert not info_nce(q, keys, pos, neg, **kwargs)[1][0]
    assert (
        info_nce(q, keys, pos, neg, correct_on_tie=True, **kwargs)[1][0]
        == (
            oracle_rows(
                q.detach().cpu(), keys.detach().cpu(), pos.cpu(), neg.cpu(), correct_on_tie=True
            )[1][0]
        )
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_count_only_rows_that_are_not_ignored(backend):
    q, keys, pos, neg = _inputs(seed=2)
    rows = info_nce(q, keys, pos, neg, backend=backend, reduction="none")
    kept = pos != IGNORE_INDEX
    assert (rows[~kept] == 0).all()
    total = info_nce(q, keys, pos, neg, backend=backend, reduction="sum")
    mean = info_nce(q, keys, pos, neg, backend=backend)
    torch.testing.assert_close(total, rows.sum())
    torch.testing.assert_close(mean, rows.sum() / kept.sum())
    all_ignored = torch.full_like(pos, IGNORE_INDEX)
    assert torch.isnan(info_nce(q, keys, all_ignored, neg, backend=backend))  # as cross_entropy


@needs_triton
@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_cosine_value_masking_deterministic_and_atomic(deterministic):
    q, keys, pos, neg = _inputs(seed=4)
    modes = {"similarity": "cosine", "mask_duplicates": "value"}
    rows = info_nce(
        q, keys, pos, neg, 0.2, "none", backend="fused", deterministic=deterministic, **modes
    )
    weights = torch.randn(q.shape[0], generator=torch.Generator().manual_seed(0)).to(DEVICE)
    gq, gk = torch.autograd.grad(rows, [q, keys], grad_outputs=weights)
    _, (eq, ek) = oracle_grads(
        lambda a, b: (
            oracle_rows(a, b, pos.cpu(), neg.cpu(), 0.2, **modes)[0] * weights.cpu().double()
        ).sum(),
        q,
        keys,
    )
    assert _close(gq, eq, 1e-5) and _close(gk, ek, 1e-5)


def test_reference_cosine_gradient_at_a_zero_and_a_tiny_query():
    # Below eps the clamp changes the value, not the derivative of the norm: torch's rule.
    q, keys, pos, neg = _inputs(M=4, Nk=5, D=8, N=3, seed=5)
    with torch.no_grad():
        q[0] = 0.0
        q[1] *= 1e-12
    rows = info_nce(q, keys, pos, neg, similarity="cosine", reduction="none", backend="reference")
    gq, gk = torch.autograd.grad(rows.sum(), [q, keys])
    e_rows, _, eq, ek = _oracle(q, keys, pos, neg, 1.0, similarity="cosine")
    assert _close(rows, e_rows, 1e-5)
    assert _close(gq, eq, 1e-5) and _close(gk, ek, 1e-5)  # |d q[0]| ~ 1 / eps


def test_reference_second_order_gradients():
    # Value masking is not differentiable (a perturbed twin stops being equal): index here.
    q, keys, pos, neg = _inputs(M=5, Nk=4, D=3, N=3, dtype=torch.float64, seed=6)
    for modes in ({}, {"similarity": "cosine", "mask_duplicates": "index"}):
        torch.autograd.gradgradcheck(
            lambda a, b, m=modes: info_nce(a, b, pos, neg, 0.5, "none", backend="reference", **m),
            (q, keys),
        )


def _plain_errors(q, keys, pos, neg, temperature, expected, similarity, mask):
    """The same rows in plain PyTorch with every op at the inputs' precision."""
    a, b = q.detach().cpu().requires_grad_(), keys.detach().cpu().requires_grad_()
    kept = pos.cpu() != IGNORE_INDEX
    idx = torch.cat([pos.cpu().clamp(min=0).view(-1, 1), neg.cpu()], 1)
    cand = b[idx]
    if similarity == "cosine":
        sim = F.cosine_similarity(a.unsqueeze(1), cand, dim=-1)
    else:
        sim = (cand * a.unsqueeze(1)).sum(-1)
    s = sim / temperature
    dup = {"index": idx[:, 1:] == idx[:, :1], "value": (cand[:, 1:] == cand[:, :1]).all(-1)}.get(
        mask
    )
    if dup is not None:
        s = torch.cat([s[:, :1], s[:, 1:].masked_fill(dup, -math.inf)], 1)
    rows = torch.where(kept, torch.logsumexp(s, 1) - s[:, 0], 0)
    ga, gb = torch.autograd.grad(rows.sum(), [a, b])
    return _max_err(rows, expected[0]), _max_err(ga, expected[2]), _max_err(gb, expected[3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("similarity, mask", [("cosine", "value"), ("dot", "index")])
def test_half_within_twice_plain_torch_error(backend, dtype, similarity, mask):
    q, keys, pos, neg = _inputs(dtype=dtype, seed=7)
    modes = {"similarity": similarity, "mask_duplicates": mask}
    rows = info_nce(q, keys, pos, neg, 0.5, "none", backend=backend, **modes)
    gq, gk = torch.autograd.grad(rows.sum(), [q, keys])
    assert rows.dtype == torch.float32 and gq.dtype == gk.dtype == dtype
    expected = _oracle(q, keys, pos, neg, 0.5, **modes)
    ours = (_max_err(rows, expected[0]), _max_err(gq, expected[2]), _max_err(gk, expected[3]))
    plain = _plain_errors(q, keys, pos, neg, 0.5, expected, similarity, mask)
    for name, o, p in zip(("loss", "d_queries", "d_keys"), ours, plain, strict=True):
        assert o <= 2 * p, f"{name}: {backend} error {o:.3g} > 2 x plain {dtype} error {p:.3g}"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"similarity": "cos"}, "`similarity`"),
        ({"mask_duplicates": "yes"}, "`mask_duplicates`"),
        ({"temperature": -0.1}, "`temperature`"),
        ({"reduction": "avg"}, "`reduction`"),
    ],
)
def test_bad_modes_name_the_argument(kwargs, match):
    q, keys, pos, neg = _inputs(M=4, Nk=5, D=8, N=3)
    with pytest.raises(UserInputError, match=match):
        info_nce(q, keys, pos, neg, backend="reference", **kwargs)
    with pytest.raises(UserInputError, match=match):
        InfoNCELoss(**kwargs)


def test_bad_indices_name_the_argument():
    q, keys, pos, neg = _inputs(M=4, Nk=5, D=8, N=3)
    with pytest.raises(UserInputError, match="`pos_index` holds index -3"):
        info_nce(q, keys, pos - pos - 3, neg, backend="reference")  # -100 only is ignored
    with pytest.raises(UserInputError, match="`neg_index` must have shape"):
        info_nce(q, keys, pos, neg[:, None], backend="reference")
    with pytest.raises(UserInputError, match="`keys` have D=7"):
        info_nce(q, keys[:, :7], pos, neg, backend="reference")
    with pytest.raises(UserInputError, match="unknown option"):
        InfoNCELoss(similarty="cosine")


def test_module_form_forwards_every_option():
    q, keys, pos, neg = _inputs(M=6, Nk=5, D=8, N=3)
    options = {"similarity": "cosine", "mask_duplicates": "value", "backend": "reference"}
    torch.testing.assert_close(
        InfoNCELoss(0.1, "sum", **options)(q, keys, pos, neg),
        info_nce(q, keys, pos, neg, 0.1, "sum", **options),
    )
