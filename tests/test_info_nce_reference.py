"""The reference backend (plain PyTorch) against the float64 oracle; API contract and errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from info_nce_oracle import oracle_cpc, oracle_rows

import cpc_fast
from cpc_fast.errors import UserInputError
from cpc_fast.losses import (
    CPCInfoNCELoss,
    InfoNCELoss,
    cpc_info_nce,
    default_backend_name,
    fused_status,
    sample_negatives,
)
from cpc_fast.losses import backend as backend_module
from cpc_fast.losses import info_nce as info_nce_module
from cpc_fast.losses import info_nce_reference as ref
from cpc_fast.losses.info_nce import info_nce


def _cpc_inputs(B, K, L, D, N, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # The model's layout: a permuted (non-contiguous) view of a (B, L, K, D) buffer.
    pred = torch.randn(B, L, K, D, generator=g, dtype=dtype).permute(0, 2, 1, 3)
    z = torch.randn(B, L, D, generator=g, dtype=dtype)
    neg = torch.randint(0, L, (B, K, L, N), generator=g)
    return pred.requires_grad_(), z.requires_grad_(), neg


@pytest.mark.parametrize("shape", [(2, 3, 13, 59, 7), (1, 4, 6, 123, 50), (3, 2, 5, 16, 1)])
def test_cpc_reference_matches_oracle(shape):
    pred, z, neg = _cpc_inputs(*shape)
    out = cpc_info_nce(pred, z, neg_index=neg, temperature=0.7, backend="reference")
    gp, gz = torch.autograd.grad(out.loss, [pred, z])
    p64, z64 = pred.detach().double().requires_grad_(), z.detach().double().requires_grad_()
    loss, per_step, acc, _, _ = oracle_cpc(p64, z64, neg, 0.7)
    ep, ez = torch.autograd.grad(loss, [p64, z64])
    torch.testing.assert_close(out.loss.double(), loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out.loss_per_step.double(), per_step, atol=1e-5, rtol=1e-5, equal_nan=True
    )
    torch.testing.assert_close(out.accuracy_per_step.double(), acc, equal_nan=True)
    torch.testing.assert_close(gp.double(), ep, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gz.double(), ez, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dense", [True, False])
def test_cpc_reference_both_scoring_paths_agree(monkeypatch, dense):
    pred, z, neg = _cpc_inputs(2, 3, 13, 20, 5)
    monkeypatch.setattr(ref, "_DENSE_MAX_RATIO", 10**6 if dense else 0)
    monkeypatch.setattr(ref, "_CHUNK_ELEMENTS", 200)  # many chunks per step
    out = cpc_info_nce(pred, z, neg_index=neg, backend="reference")
    loss, per_step, _, _, _ = oracle_cpc(pred.detach(), z.detach(), neg)
    torch.testing.assert_close(out.loss.double(), loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss_per_step.double(), per_step, atol=1e-5, rtol=1e-5)


def test_naive_baseline_matches_reference(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from naive_info_nce import cpc_info_nce_naive  # the benchmarks' baseline, in bench/

    pred, z, neg = _cpc_inputs(2, 3, 11, 16, 6)
    naive = cpc_info_nce_naive(pred, z, neg)
    out = cpc_info_nce(pred, z, neg_index=neg, backend="reference")
    torch.testing.assert_close(naive, out.loss, atol=1e-5, rtol=1e-5)


def test_gradcheck_reference_float64():
    pred, z, neg = _cpc_inputs(1, 2, 5, 3, 3, dtype=torch.float64)
    neg[0, 0, 0] = torch.tensor([1, 1, 1])  # the positive itself, three times
    torch.autograd.gradcheck(
        lambda p, zz: cpc_info_nce(p, zz, neg_index=neg, temperature=0.5, backend="reference").loss,
        (pred, z),
    )
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    pos, negs = torch.tensor([0, 1, 1, 4]), torch.tensor([[1, 1], [2, 1], [0, 3], [4, 4]])
    torch.autograd.gradcheck(
        lambda a, b: info_nce(a, b, pos, negs, 0.3, "none", backend="reference"), (q, keys)
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_general_reference_matches_oracle(reduction, index_dtype):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(9, 7, generator=g, requires_grad=True)
    keys = torch.randn(6, 7, generator=g, requires_grad=True)
    pos = torch.randint(0, 6, (9,), generator=g).to(index_dtype)
    neg = torch.randint(0, 6, (9, 4), generator=g).to(index_dtype)
    neg[0] = pos[0]  # duplicates of the positive
    loss, correct = info_nce(
        q, keys, pos, neg, 2.0, reduction, backend="reference", return_correct=True
    )
    rows, ok, _ = oracle_rows(q.detach(), keys.detach(), pos, neg, 2.0)
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(correct, ok)
    assert not correct[0]


def test_reference_same_tensor_as_queries_and_keys():
    x = torch.randn(8, 5, requires_grad=True)
    pos, neg = torch.arange(1, 9) % 8, torch.randint(0, 8, (8, 3))
    grad = torch.autograd.grad(info_nce(x, x, pos, neg, backend="reference"), x)[0]
    x64 = x.detach().double().requires_grad_()
    expected = torch.autograd.grad(oracle_rows(x64, x64, pos, neg)[0].mean(), x64)[0]
    torch.testing.assert_close(grad.double(), expected, atol=1e-6, rtol=1e-5)


def test_reference_under_autocast_runs_in_float32():
    pred, z, neg = _cpc_inputs(2, 2, 7, 8, 3)
    plain = cpc_info_nce(pred, z, neg_index=neg, backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = cpc_info_nce(pred, z, neg_index=neg, backend="reference")
    assert auto.loss.dtype == torch.float32
    torch.testing.assert_close(auto.loss, plain.loss)


def test_reference_half_inputs_give_float32_loss():
    pred, z, neg = _cpc_inputs(1, 2, 6, 8, 3)
    out = cpc_info_nce(
        pred.detach().bfloat16(), z.detach().bfloat16(), neg_index=neg, backend="reference"
    )
    assert out.loss.dtype == torch.float32


def test_seed_makes_reference_reproducible():
    pred, z, _ = _cpc_inputs(2, 3, 9, 8, 1)
    a = cpc_info_nce(pred, z, num_negatives=5, seed=3, backend="reference").loss
    b = cpc_info_nce(pred, z, num_negatives=5, seed=3, backend="reference").loss
    c = cpc_info_nce(pred, z, num_negatives=5, seed=4, backend="reference").loss
    assert a.item() == b.item() != c.item()
    gen = torch.Generator().manual_seed(3)
    expected = sample_negatives(2, 3, 9, 5, generator=gen)
    d = cpc_info_nce(pred, z, neg_index=expected, backend="reference").loss
    assert d.item() == a.item()


def test_rows_use_only_their_own_sequence():
    pred, z, neg = _cpc_inputs(2, 2, 6, 4, 3)
    before = ref.cpc_info_nce_rows_reference(pred, z, neg)[0]
    z2 = z.detach().clone()
    z2[1] = torch.randn_like(z2[1])  # a shift would leave softmax unchanged
    after = ref.cpc_info_nce_rows_reference(pred, z2, neg)[0]
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def test_too_short_sequences_are_a_clear_error():
    pred, z, neg = _cpc_inputs(1, 2, 1, 4, 3)
    with pytest.raises(UserInputError, match="too short"):
        cpc_info_nce(pred, z, backend="reference")


def test_steps_beyond_the_sequence_report_nan():
    pred, z, neg = _cpc_inputs(1, 4, 3, 4, 2)
    out = cpc_info_nce(pred, z, neg_index=neg, backend="reference")
    assert torch.isfinite(out.loss)
    assert torch.isnan(out.loss_per_step[2:]).all() and torch.isfinite(out.loss_per_step[:2]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"neg_index": torch.full((1, 2, 5, 3), 5)}, "outside"),
        ({"neg_index": torch.zeros(1, 2, 5, 3)}, "int32 or int64"),
        ({"neg_index": torch.zeros(1, 2, 4, 3, dtype=torch.long)}, "shape"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"seed": 1, "generator": torch.Generator()}, "either `seed` or `generator`"),
        ({"backend": "cuda"}, "backend"),
        ({"design": "fast"}, "design"),
    ],
)
def test_bad_arguments_raise_user_input_error(kwargs, match):
    pred, z, _ = _cpc_inputs(1, 2, 5, 4, 3)
    with pytest.raises(UserInputError, match=match):
        cpc_info_nce(pred, z, **{"backend": "reference", **kwargs})


def test_bad_general_arguments_raise():
    q, keys = torch.randn(4, 3), torch.randn(5, 3)
    pos, neg = torch.zeros(4, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long)
    with pytest.raises(UserInputError, match="`pos_index` holds index 5"):
        info_nce(q, keys, pos + 5, neg, backend="reference")
    with pytest.raises(UserInputError, match="reduction"):
        info_nce(q, keys, pos, neg, reduction="max", backend="reference")
    with pytest.raises(UserInputError, match="D=4"):
        info_nce(q, torch.randn(5, 4), pos, neg, backend="reference")
    with pytest.raises(UserInputError, match="`neg_index` must have shape"):
        info_nce(q, keys, pos, neg[:3], backend="reference")
    with pytest.raises(UserInputError, match="reduction"):  # at construction, not first call
        InfoNCELoss(reduction="avg")
    # The reference has no safe path for a bad index: it checks even when told not to.
    with pytest.raises(UserInputError, match="`neg_index` holds index 5"):
        info_nce(q, keys, pos, neg + 5, backend="reference", check_indices=False)


def test_backend_selection(monkeypatch, caplog):
    pred, z, neg = _cpc_inputs(1, 2, 5, 4, 3)
    monkeypatch.setenv("CPC_FAST_LOSS_BACKEND", "nonsense")
    with pytest.raises(UserInputError, match="CPC_FAST_LOSS_BACKEND"):
        cpc_info_nce(pred, z, neg_index=neg)
    monkeypatch.setenv("CPC_FAST_LOSS_BACKEND", "reference")
    assert default_backend_name() == "reference"
    cpc_info_nce(pred, z, neg_index=neg)
    monkeypatch.delenv("CPC_FAST_LOSS_BACKEND")
    # CPU tensors: auto picks the reference and says so once.
    monkeypatch.setattr(backend_module, "_said_fallback", False)
    with caplog.at_level(logging.INFO, logger="cpc_fast.losses.info_nce"):
        cpc_info_nce(pred, z, neg_index=neg)
        cpc_info_nce(pred, z, neg_index=neg)
    assert sum("reference backend" in r.message for r in caplog.records) == 1
    ok, reason = fused_status()
    assert ok == torch.cuda.is_available() and reason
    with pytest.raises(UserInputError, match="float64"):
        cpc_info_nce(pred.double(), z.double(), neg_index=neg, backend="fused")


def test_modules_and_top_level_exports():
    pred, z, neg = _cpc_inputs(1, 2, 6, 4, 3)
    out = CPCInfoNCELoss(num_negatives=3, backend="reference")(pred, z, neg_index=neg)
    torch.testing.assert_close(
        out.loss, cpc_info_nce(pred, z, neg_index=neg, backend="reference").loss
    )
    q, keys = torch.randn(4, 3), torch.randn(5, 3)
    pos, negs = torch.tensor([0, 1, 2, 3]), torch.randint(0, 5, (4, 2))
    torch.testing.assert_close(
        InfoNCELoss(0.5, "sum", backend="reference")(q, keys, pos, negs),
        info_nce(q, keys, pos, negs, 0.5, "sum", backend="reference"),
    )
    assert cpc_fast.cpc_info_nce is cpc_info_nce and cpc_fast.InfoNCELoss is InfoNCELoss
    assert cpc_fast.info_nce is info_nce
    assert info_nce_module.fused_status is fused_status  # the module keeps its name
