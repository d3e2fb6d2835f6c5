"""The fused InfoNCE as an autograd citizen, and its behaviour on bad indices.

Double backward, indices changed in place before backward, inputs that do not need a
gradient, non-uniform and non-contiguous upstream gradients, ``torch.compile`` through the
loss (``test_info_nce_compile.py`` has more), and out-of-range indices (a clear error by
default; NaN rows, never an out-of-bounds read, without the check). Interpreted on CPU
(small shapes), compiled on a GPU.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from cpc_fast.kernels import info_nce as launchers
from info_nce_oracle import oracle_rows
from interpreter_bounds import bounds_checked
from test_info_nce_fused import DESIGNS, DEVICE, _cpc_inputs, _oracle

from cpc_fast.errors import UserInputError
from cpc_fast.losses import cpc_info_nce
from cpc_fast.losses._fused import FusedOptions, fused_info_nce
from cpc_fast.losses.info_nce import info_nce

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
SHAPE = (2, 3, 9, 16, 5)  # B, K, L, D, N


def _general_inputs(M=9, Nk=7, D=20, N=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(M, D, generator=g).to(DEVICE).requires_grad_()
    keys = torch.randn(Nk, D, generator=g).to(DEVICE).requires_grad_()
    pos = torch.randint(0, Nk, (M,), generator=g).to(DEVICE)
    neg = torch.randint(0, Nk, (M, N), generator=g).to(DEVICE)
    return q, keys, pos, neg


@pytest.mark.parametrize("design", list(DESIGNS))
def test_double_backward_raises_instead_of_dropping_the_term(design):
    pred, z, neg = _cpc_inputs(*SHAPE)
    out = cpc_info_nce(pred, z, neg_index=neg, backend="fused", **DESIGNS[design])
    (gp,) = torch.autograd.grad(out.loss, [pred], create_graph=True)
    # A gradient penalty: without a clear error its second-order term would silently be 0.
    with pytest.raises(RuntimeError, match="no double backward"):
        (gp.square().sum() + pred.sum()).backward()


@pytest.mark.parametrize("design", list(DESIGNS))
def test_indices_changed_in_place_before_backward_raise(design):
    pred, z, neg = _cpc_inputs(*SHAPE)
    out = cpc_info_nce(pred, z, neg_index=neg, backend="fused", **DESIGNS[design])
    neg.add_(1).remainder_(SHAPE[2])  # e.g. the next step's negatives sampled into the buffer
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.loss.backward()


def _fail(*_args, **_kwargs):
    raise AssertionError("computed a gradient nobody asked for")


class _NoLaunch:
    def __getitem__(self, grid):
        return _fail


@pytest.mark.parametrize("design", list(DESIGNS))
def test_only_the_needed_gradients_are_computed(design, monkeypatch):
    pred, z, neg = _cpc_inputs(*SHAPE)
    _, _, _, ep, ez = _oracle(pred, z, neg, 1.0)
    monkeypatch.setattr(launchers, "_segment_dk", _fail)
    monkeypatch.setattr(launchers, "_dense_bwd_dz_kernel", _NoLaunch())
    frozen_z = z.detach()  # a target network's latents
    out = cpc_info_nce(pred, frozen_z, neg_index=neg, backend="fused", **DESIGNS[design])
    (gp,) = torch.autograd.grad(out.loss, [pred])
    torch.testing.assert_close(gp.cpu().double(), ep, atol=1e-6, rtol=1e-5)
    monkeypatch.undo()
    monkeypatch.setattr(launchers, "_dense_bwd_dq_kernel", _NoLaunch())
    out = cpc_info_nce(pred.detach(), z, neg_index=neg, backend="fused", **DESIGNS[design])
    (gz,) = torch.autograd.grad(out.loss, [z])
    torch.testing.assert_close(gz.cpu().double(), ez, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True])
def test_reduction_none_with_a_non_uniform_strided_upstream_gradient(deterministic):
    q, keys, pos, neg = _general_inputs()
    weights = torch.randn(2 * q.shape[0], generator=torch.Generator().manual_seed(4))
    weights = weights.to(DEVICE)[::2]  # non-contiguous grad_output
    rows = info_nce(q, keys, pos, neg, 0.7, "none", backend="fused", deterministic=deterministic)
    gq, gk = torch.autograd.grad(rows, [q, keys], grad_outputs=weights)
    q64 = q.detach().cpu().double().requires_grad_()
    k64 = keys.detach().cpu().double().requires_grad_()
    rows64 = oracle_rows(q64, k64, pos.cpu(), neg.cpu(), 0.7)[0]
    eq, ek = torch.autograd.grad(rows64, [q64, k64], grad_outputs=weights.cpu().double())
    torch.testing.assert_close(gq.cpu().double(), eq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gk.cpu().double(), ek, atol=1e-5, rtol=1e-5)
    assert gq.dtype == q.dtype and gk.dtype == keys.dtype


@pytest.mark.parametrize("design", ["gather", "philox"])
def test_fused_loss_inside_a_compiled_function(design):
    # The loss is a custom op: Dynamo traces through it (no graph break: fullgraph=True),
    # with the same value and gradients as eagerly.
    torch._dynamo.reset()
    B, K, L, D, N = SHAPE
    pred, z, neg = _cpc_inputs(*SHAPE)
    kwargs = {"neg_index": neg} if design == "gather" else {"num_negatives": N, "seed": 5}

    def step(p, zz):
        out = cpc_info_nce(torch.tanh(p), zz * 2, backend="fused", design=design, **kwargs)
        return out.loss * 3

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    got = compiled(pred, z)
    g_got = torch.autograd.grad(got, [pred, z])
    want = step(pred, z)
    g_want = torch.autograd.grad(want, [pred, z])
    torch.testing.assert_close(got, want)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)


def test_more_query_rows_than_int32_row_ids_is_a_clear_error():
    # Zero-stride views: 2**31 rows without the memory. The fused kernels number rows in
    # int32; the auto backend would fall back to the reference, a forced one must refuse.
    pred = torch.zeros(1, device=DEVICE).expand(1, 1, 2**31, 1)
    z = torch.zeros(1, device=DEVICE).expand(1, 2**31, 1)
    with pytest.raises(UserInputError, match="exceed the kernels' int32 row ids"):
        cpc_info_nce(pred, z, num_negatives=3, backend="fused")


# --- out-of-range indices -------------------------------------------------------------------


def test_out_of_range_indices_are_a_clear_error_by_default():
    pred, z, neg = _cpc_inputs(*SHAPE)
    neg[1, 2, 3, 4] = SHAPE[2]
    with pytest.raises(UserInputError, match=f"`neg_index` holds index {SHAPE[2]}"):
        cpc_info_nce(pred, z, neg_index=neg, backend="fused", design="gather")
    q, keys, pos, negs = _general_inputs()
    with pytest.raises(UserInputError, match="`pos_index` holds index -1"):
        info_nce(q, keys, pos - pos - 1, negs, backend="fused")


@pytest.mark.parametrize("design", list(DESIGNS))
def test_unchecked_out_of_range_cpc_index_gives_nan_not_a_wrong_number(design):
    B, K, L, D, N = SHAPE
    pred, z, neg = _cpc_inputs(*SHAPE)
    good = neg.clone()
    neg[0, 1, 2, 3] = L  # one past the sequence: would read the next sequence's first frame
    neg[1, 0, 4, 0] = -3
    neg[1, 2, 0, 1] = 2**40  # would wrap to a small frame number in int32
    out = cpc_info_nce(
        pred, z, neg_index=neg, backend="fused", check_indices=False, **DESIGNS[design]
    )
    assert torch.isnan(out.loss)
    assert torch.isnan(out.loss_per_step).all()  # every step holds a bad row
    gp, gz = torch.autograd.grad(out.loss, [pred, z])
    assert torch.isnan(gp[0, 1, 2]).all() and torch.isnan(gz).any()
    # The rows themselves: NaN exactly where an index is bad, the oracle elsewhere.
    rows = _fused_rows(pred, z, neg, design)
    expected = _fused_rows(pred, z, good, design)
    bad = torch.zeros(B, K, L, dtype=torch.bool)
    bad[0, 1, 2] = bad[1, 0, 4] = bad[1, 2, 0] = True
    assert torch.equal(torch.isnan(rows).cpu(), bad)
    torch.testing.assert_close(rows[~bad.to(rows.device)], expected[~bad.to(rows.device)])


def _fused_rows(pred, z, neg, design):
    """Per-row fused losses (B, K, L) through the custom op, unchecked."""
    L = z.shape[1]
    kind = "dense" if design == "dense" else "gather"
    options = FusedOptions(neg.shape[3], 1.0, seq_len=L, design=kind, check_indices=False)
    with torch.no_grad():
        return fused_info_nce(pred, z, None, neg, None, *options)[0]


@pytest.mark.parametrize("deterministic", [False, True])
def test_unchecked_out_of_range_general_index_gives_nan(deterministic):
    q, keys, pos, neg = _general_inputs()
    Nk = keys.shape[0]
    pos_bad, neg_bad = pos.clone(), neg.clone()
    pos_bad[2] = Nk
    neg_bad[5, 1] = -1
    rows = info_nce(
        q,
        keys,
        pos_bad,
        neg_bad,
        reduction="none",
        backend="fused",
        deterministic=deterministic,
        check_indices=False,
    )
    bad = torch.zeros(q.shape[0], dtype=torch.bool)
    bad[2] = bad[5] = True
    assert torch.equal(torch.isnan(rows).cpu(), bad)
    expected = oracle_rows(q.detach().cpu(), keys.detach().cpu(), pos.cpu(), neg.cpu())[0]
    torch.testing.assert_close(
        rows.detach().cpu().double()[~bad], expected[~bad], atol=1e-5, rtol=1e-5
    )
    gq, gk = torch.autograd.grad(rows.sum(), [q, keys])
    assert torch.isnan(gq[2]).all() and torch.isnan(gq[5]).all()
    assert torch.isfinite(gq[~bad.to(gq.device)]).all() and torch.isnan(gk).any()


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("mask", ["none", "index", "value"])
def test_unchecked_bad_positives_read_nothing_outside_the_inputs(mask, deterministic):
    # The deterministic d_keys pass loads each entry's positive again to mask by value: an
    # unchecked positive of -1, Nk or 2**40 must read row 0 there too, not keys[pos].
    q, keys, pos, neg = _general_inputs()
    Nk = keys.shape[0]
    neg[0, 0], neg[3, 1], neg[4, 2] = pos[0], pos[3], pos[4]  # duplicates for the masks
    bad = torch.zeros(q.shape[0], dtype=torch.bool)
    bad[[1, 4, 6]] = True
    pos_bad = pos.clone()
    pos_bad[1], pos_bad[4], pos_bad[6] = -1, Nk, 2**40
    interpreted = DEVICE == "cpu"  # compiled, bench/gpu_check.sh runs compute-sanitizer
    with bounds_checked() if interpreted else contextlib.nullcontext([]) as outside:
        rows = info_nce(q, keys, pos_bad, neg, reduction="none", backend="fused",
                        mask_duplicates=mask, deterministic=deterministic,
                        check_indices=False)  # fmt: skip
        gq, gk = torch.autograd.grad(rows.sum(), [q, keys])
    assert outside == []
    assert torch.equal(torch.isnan(rows).cpu(), bad)
    # Every other row, and every key row that no bad row names, as if the bad rows were not.
    q64 = q.detach().cpu().double().requires_grad_()
    k64 = keys.detach().cpu().double().requires_grad_()
    rows64 = oracle_rows(q64, k64, pos.cpu(), neg.cpu(), mask_duplicates=mask)[0]
    eq, ek = torch.autograd.grad(rows64[~bad].sum(), [q64, k64])
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(rows.detach().cpu().double()[~bad], rows64[~bad].detach(), **close)
    torch.testing.assert_close(gq.cpu().double()[~bad], eq[~bad], **close)
    named = torch.zeros(Nk, dtype=torch.bool)
    named[neg[bad.to(neg.device)].cpu().flatten()] = True
    named[0] = True  # a bad positive reads row 0
    torch.testing.assert_close(gk.cpu().double()[~named], ek[~named], **close)
    assert torch.isnan(gk.cpu()[named]).any()


# --- compiled kernels on a GPU (bench/gpu_check.sh) -----------------------------------------


@pytest.mark.cuda
def test_fused_loss_in_an_inductor_compiled_model_on_cuda():
    torch._dynamo.reset()
    B, K, L, D, N = 4, 12, 128, 64, 50
    head = torch.nn.Linear(D, K * D).cuda()
    z = torch.randn(B, L, D, device="cuda", requires_grad=True)

    def step(zz):
        pred = head(torch.relu(zz)).view(B, L, K, D).permute(0, 2, 1, 3)
        return cpc_info_nce(pred, zz, num_negatives=N, seed=3, backend="fused").loss

    got = torch.compile(step, fullgraph=True)(z)
    g_got = torch.autograd.grad(got, [z, head.weight])
    want = step(z)
    g_want = torch.autograd.grad(want, [z, head.weight])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("design", ["philox", "gather", "gather-deterministic", "dense"])
def test_tensors_on_another_gpu_than_the_current_one(design):
    # Triton launches on the current device: the launchers must switch to the tensors' own.
    B, K, L, D, N = 2, 4, 64, 32, 10
    g = torch.Generator(device="cuda:1").manual_seed(0)
    pred = torch.randn(B, K, L, D, device="cuda:1", generator=g).requires_grad_()
    z = torch.randn(B, L, D, device="cuda:1", generator=g).requires_grad_()
    neg = torch.randint(0, L, (B, K, L, N), device="cuda:1", generator=g)
    kwargs = {"gather-deterministic": {"design": "gather", "deterministic": True}}.get(
        design, {"design": design}
    )
    if design in ("philox", "dense"):
        from cpc_fast.losses import philox_negatives

        with torch.cuda.device(1):
            neg = philox_negatives(9, B, K, L, N, device="cuda:1")
        kwargs.update(num_negatives=N, seed=9)
    else:
        kwargs.update(neg_index=neg)
    with torch.cuda.device(0):
        fused = cpc_info_nce(pred, z, backend="fused", **kwargs)
        grads = torch.autograd.grad(fused.loss, [pred, z])
    ref = cpc_info_nce(pred, z, neg_index=neg, backend="reference")
    ref_grads = torch.autograd.grad(ref.loss, [pred, z])
    torch.testing.assert_close(fused.loss, ref.loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        assert a.device == b.device == torch.device("cuda:1")
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
