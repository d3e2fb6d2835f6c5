"""The reference backend's form for negatives shared by the K steps (CPC_audio's): each frame's
K + N candidates gathered once (``cpc_fast::shared_negatives_info_nce``), against the float64
oracle, which repeats the shared negatives at every step and scores each row on its own."""

from __future__ import annotations

import pytest
import torch
from info_nce_oracle import oracle_cpc, oracle_grads

from cpc_fast.losses import info_nce_reference as ref
from cpc_fast.losses.info_nce import cpc_info_nce
from cpc_fast.losses.negatives import IGNORE_INDEX


def _inputs(B=3, K=4, L=13, D=10, N=6, T=None, batch=True, dtype=torch.float32, seed=0):
    """predictions (B, K, T, D) in the model's layout, z (B, L, D) with a frame repeated by
    value, and shared negatives (B, 1, T, N) holding ties with some step's positive."""
    g = torch.Generator().manual_seed(seed)
    T = L - K if T is None else T
    pred = torch.randn(B, T, K, D, generator=g, dtype=dtype).permute(0, 2, 1, 3)
    z = torch.randn(B, L, D, generator=g, dtype=dtype)
    z[0, 5] = z[1, 7]  # equal by value in two sequences: a tie by value only
    span = B * L if batch else L
    neg = torch.randint(0, span, (B, 1, T, N), generator=g)
    first = L if batch else 0
    neg[1, 0, 2, :2] = first + 2 + 3  # row (1, t=2): step 3's positive, twice (ties)
    neg[0, 0, 0, 0] = 1  # row (0, t=0): step 1's positive
    neg[0, 0, 1, 1] = 1 * L + 7 if batch else 5  # z[0, 5]'s copy, or the frame itself
    return pred.requires_grad_(), z.requires_grad_(), neg


@pytest.fixture
def shared_path(monkeypatch):
    """Every shared-negatives call takes the shared form, with a few frames per chunk; the
    calls it gets are counted."""
    calls = []
    monkeypatch.setattr(ref, "_SHARED_MIN_RATIO", 0)
    monkeypatch.setattr(ref, "_SHARED_CHUNK_ELEMENTS", 300)
    op = ref.shared_negatives_info_nce

    def counted(*args):
        calls.append(args[0].shape)
        return op(*args)

    monkeypatch.setattr(ref, "shared_negatives_info_nce", counted)
    return calls


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "sequence"])
@pytest.mark.parametrize("window", [True, False], ids=["T=L-K", "T=L"])
@pytest.mark.parametrize("on_tie", [True, False], ids=["argmax", "strict"])
def test_shared_form_matches_the_oracle_with_gradients(shared_path, batch, window, on_tie):
    pred, z, neg = _inputs(T=None if window else 13, batch=batch)
    options = {"negatives_from": "batch" if batch else "sequence", "correct_on_tie": on_tie}
    out = cpc_info_nce(pred, z, neg_index=neg, temperature=0.7, backend="reference", **options)
    assert shared_path, "the shared form did not run"
    gp, gz = torch.autograd.grad(out.loss, [pred, z])

    def oracle(p, zz):
        return oracle_cpc(p, zz, neg, 0.7, across_batch=batch, correct_on_tie=on_tie)

    loss, per_step, accuracy, _, _ = oracle(pred.detach().double(), z.detach().double())
    torch.testing.assert_close(out.loss.double(), loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss_per_step.double(), per_step, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.accuracy_per_step.double(), accuracy)
    _, (ep, ez) = oracle_grads(lambda p, zz: oracle(p, zz)[0], pred, z)
    torch.testing.assert_close(gp.double(), ep, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gz.double(), ez, rtol=1e-5, atol=1e-7)


def test_shared_and_per_step_forms_agree(monkeypatch):
    pred, z, neg = _inputs(B=2, K=3, L=9, D=8, N=5)
    kwargs = {"neg_index": neg, "negatives_from": "batch", "backend": "reference"}
    results = []
    for ratio in (0, 10**6):  # the shared form, then one step at a time
        monkeypatch.setattr(ref, "_SHARED_MIN_RATIO", ratio)
        out = cpc_info_nce(pred, z, correct_on_tie=True, **kwargs)
        results.append((out.loss, out.accuracy_per_step, *torch.autograd.grad(out.loss, [pred, z])))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_gradients_of_first_and_second_order_float64(shared_path):
    pred, z, neg = _inputs(B=2, K=3, L=9, D=4, N=3, T=9, dtype=torch.float64)  # T=L: ignored rows

    def loss(p, zz):
        out = cpc_info_nce(p, zz, neg_index=neg, temperature=0.5, negatives_from="batch")
        return out.loss

    torch.autograd.gradcheck(loss, (pred, z))
    torch.autograd.gradgradcheck(loss, (pred, z))


def test_opcheck_shared_op():
    g = torch.Generator().manual_seed(1)
    R, K, D, N, Nk = 7, 3, 5, 4, 11
    queries = torch.randn(R, K, D, generator=g, requires_grad=True)
    keys = torch.randn(Nk, D, generator=g, requires_grad=True)
    pos = torch.randint(0, Nk, (R, K), generator=g)
    pos[-1, 1:] = IGNORE_INDEX  # past the sequence's end
    neg = torch.randint(0, Nk, (R, N), generator=g)
    for on_tie in (True, False):
        torch.library.opcheck(
            ref.shared_negatives_info_nce, (queries, keys, pos, neg, 0.25, on_tie)
        )


def test_shared_form_in_a_fullgraph_compiled_model(shared_path):
    pred, z, neg = _inputs(B=2, K=3, L=9, D=8, N=4)
    head = torch.nn.Linear(8, 3 * 8)
    zz = z.detach().requires_grad_()

    def step(x):
        p = head(x[:, :6]).view(2, 6, 3, 8).permute(0, 2, 1, 3)
        return cpc_info_nce(p, x, neg_index=neg, negatives_from="batch").loss

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, want = compiled(zz), step(zz)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, zz), torch.autograd.grad(want, zz))


@pytest.mark.parametrize(
    "B, L, N, shared",
    [(8, 1000, 128, True), (8, 128, 128, True), (4, 128, 128, True), (3, 128, 128, False)],
)
def test_the_shared_form_runs_where_it_is_the_faster(monkeypatch, B, L, N, shared):
    """Above 3 (K + N) key rows (the batch's B·L frames) the shared form; below, scoring every
    frame step by step (measured on a CPU: bench/bench_cpc_audio.py)."""
    seen = []
    monkeypatch.setattr(ref, "_shared_rows", lambda *args: seen.append(args) or 1 / 0)
    monkeypatch.setattr(ref, "_cpc_step", lambda *args: seen.append(None) or 1 / 0)
    pred = torch.zeros(B, 12, 1, 4).expand(B, 12, L - 12, 4)  # no memory for the shapes
    with pytest.raises(ZeroDivisionError):
        ref.cpc_info_nce_rows_reference(
            pred,
            torch.zeros(B, L, 4),
            torch.zeros(B, 1, L - 12, N, dtype=torch.long),
            batch_keys=True,
        )
    assert (seen[0] is not None) == shared


def test_half_inputs_are_scored_in_float32_and_get_gradients_in_their_dtype(shared_path):
    pred, z, neg = _inputs()
    kwargs = {"neg_index": neg, "negatives_from": "batch", "backend": "reference"}
    half = [t.detach().bfloat16().requires_grad_() for t in (pred, z)]
    out = cpc_info_nce(*half, **kwargs)
    want = cpc_info_nce(*(t.detach().float() for t in half), **kwargs)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, want.loss)  # the same float32 arithmetic
    grads = torch.autograd.grad(out.loss, half)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.bfloat16]
