"""The fused Triton kernels against the float64 oracle.

On a CPU machine the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by
conftest) on small shapes; ``cuda``-marked tests run them compiled at the paper's shape
(bench/gpu_check.sh). Low-precision inputs must stay within 2x the error that plain PyTorch
makes at that precision, measured against the same float64 oracle on the same inputs.
"""

from __future__ import annotations

import pytest
import torch
from info_nce_oracle import oracle_cpc, oracle_rows

from cpc_fast.errors import UserInputError
from cpc_fast.losses import cpc_info_nce, philox_negatives
from cpc_fast.losses.info_nce import info_nce

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, K, L, D, N): D and N not powers of two, odd L, N = 1, a step k with no valid row.
SHAPES = [(2, 3, 13, 59, 7), (1, 2, 9, 123, 50), (2, 4, 7, 100, 37), (3, 6, 6, 16, 1)]
# design name -> cpc_info_nce keyword arguments
DESIGNS = {
    "gather": {"design": "gather"},
    "gather-deterministic": {"design": "gather", "deterministic": True},
    "dense": {"design": "dense"},
}


def _cpc_inputs(B, K, L, D, N, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, L, K, D, generator=g).permute(0, 2, 1, 3)  # the model's layout
    z = torch.randn(B, L, D, generator=g)
    neg = torch.randint(0, L, (B, K, L, N), generator=g)
    neg[0, 0, 0, 0] = 1  # a negative that is the positive of row (0, 0, 0)
    neg[0, 0, 1, : min(N, 3)] = 4  # the same frame drawn several times
    return (
        pred.to(DEVICE, dtype).requires_grad_(),
        z.to(DEVICE, dtype).requires_grad_(),
        neg.to(DEVICE),
    )


def _oracle(pred, z, neg, temperature):
    p64 = pred.detach().cpu().double().requires_grad_()
    z64 = z.detach().cpu().double().requires_grad_()
    loss, per_step, acc, _, _ = oracle_cpc(p64, z64, neg.cpu(), temperature)
    gp, gz = torch.autograd.grad(loss, [p64, z64])
    return loss, per_step, acc, gp, gz


def _errors(out, gp, gz, expected):
    loss, per_step, _, ep, ez = expected
    return (
        (out.loss.detach().cpu().double() - loss).abs().item(),
        (out.loss_per_step.detach().cpu().double() - per_step).nan_to_num().abs().max().item(),
        (gp.cpu().double() - ep).abs().max().item(),
        (gz.cpu().double() - ez).abs().max().item(),
    )


def _plain_torch_errors(pred, z, neg, temperature, expected):
    """The same loss in plain PyTorch with every op at the input precision."""
    B, K, L, D = pred.shape
    p = pred.detach().cpu().requires_grad_()
    zz = z.detach().cpu().requires_grad_()
    losses = []
    for k in range(K):
        T = L - k - 1
        if T <= 0:
            losses.append(None)
            continue
        idx = torch.cat(
            [torch.arange(k + 1, L).view(1, T, 1).expand(B, T, 1), neg[:, k, :T].cpu()], 2
        )
        cand = zz[torch.arange(B).view(B, 1, 1), idx]  # (B, T, N + 1, D)
        s = (cand * p[:, k, :T].unsqueeze(2)).sum(-1) / temperature
        losses.append(torch.logsumexp(s, -1) - s[..., 0])
    rows = torch.cat([x.reshape(-1) for x in losses if x is not None])
    loss = rows.float().mean()
    per_step = torch.stack(
        [x.float().mean() if x is not None else loss.new_tensor(float("nan")) for x in losses]
    )
    gp, gz = torch.autograd.grad(rows.sum() / rows.numel(), [p, zz])

    class _Out:
        pass

    out = _Out()
    out.loss, out.loss_per_step = loss, per_step
    return _errors(out, gp, gz, expected)


@pytest.mark.parametrize("design", list(DESIGNS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpc_fused_fp32_matches_oracle(design, shape):
    pred, z, neg = _cpc_inputs(*shape)
    out = cpc_info_nce(pred, z, neg_index=neg, temperature=0.8, backend="fused", **DESIGNS[design])
    gp, gz = torch.autograd.grad(out.loss, [pred, z])
    expected = _oracle(pred, z, neg, 0.8)
    e_loss, e_step, e_gp, e_gz = _errors(out, gp, gz, expected)
    assert e_loss < 1e-5 and e_step < 1e-5, (e_loss, e_step)
    assert e_gp < 1e-6 and e_gz < 1e-6, (e_gp, e_gz)
    torch.testing.assert_close(out.accuracy_per_step.cpu().double(), expected[2], equal_nan=True)
    assert out.loss.dtype == torch.float32
    # Rows past the sequence end get exactly zero gradient.
    B, K, L, _ = pred.shape
    for k in range(K):
        assert (gp[:, k, max(L - k - 1, 0) :] == 0).all()


@pytest.mark.parametrize("design", list(DESIGNS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpc_fused_half_within_twice_plain_torch_error(design, dtype):
    shape = (2, 3, 13, 59, 7)
    pred, z, neg = _cpc_inputs(*shape, dtype=dtype, seed=2)
    out = cpc_info_nce(pred, z, neg_index=neg, temperature=0.5, backend="fused", **DESIGNS[design])
    gp, gz = torch.autograd.grad(out.loss, [pred, z])
    assert gp.dtype == dtype and gz.dtype == dtype and out.loss.dtype == torch.float32
    expected = _oracle(pred, z, neg, 0.5)
    fused = _errors(out, gp, gz, expected)
    plain = _plain_torch_errors(pred, z, neg, 0.5, expected)
    for name, f, p in zip(("loss", "loss_per_step", "d_pred", "d_z"), fused, plain, strict=True):
        assert f <= 2 * p, f"{name}: fused error {f:.3g} > 2 x plain {dtype} error {p:.3g}"


def test_dense_fp16_gradients_at_a_realistic_upstream_gradient():
    # At the paper's shape each row's upstream gradient is 1 / 95,376 ~ 1e-5, so dS ~ 1e-7:
    # subnormal in fp16 if rounded as is. Scaling the loss by 1e-4 puts these small shapes
    # there. The dense design's gradients must be as good as the gather design's, which
    # accumulates in fp32 and rounds only the final gradient.
    pred, z, neg = _cpc_inputs(2, 3, 13, 59, 7, dtype=torch.float16, seed=2)
    _, _, _, ep, ez = _oracle(pred, z, neg, 0.5)
    errors = {}
    for design in ("gather", "dense"):
        out = cpc_info_nce(pred, z, neg_index=neg, temperature=0.5, backend="fused", design=design)
        gp, gz = torch.autograd.grad(out.loss * 1e-4, [pred, z])
        errors[design] = [
            ((g.cpu().double() - e * 1e-4).abs().max() / (e * 1e-4).abs().max()).item()
            for g, e in ((gp, ep), (gz, ez))
        ]
    for dense, gather in zip(errors["dense"], errors["gather"], strict=True):
        assert dense <= 1.5 * gather, errors


def test_philox_kernels_use_the_materialised_indices():
    B, K, L, D, N = 2, 3, 11, 24, 9
    pred, z, _ = _cpc_inputs(B, K, L, D, N)
    for exclude in (False, True):
        seeded = cpc_info_nce(
            pred,
            z,
            num_negatives=N,
            seed=1234,
            exclude_positive=exclude,
            backend="fused",
            design="philox",
        )
        grads = torch.autograd.grad(seeded.loss, [pred, z])
        idx = philox_negatives(1234, B, K, L, N, device=DEVICE, exclude_positive=exclude)
        explicit = cpc_info_nce(pred, z, neg_index=idx, backend="fused", design="gather")
        grads_explicit = torch.autograd.grad(explicit.loss, [pred, z])
        torch.testing.assert_close(seeded.loss, explicit.loss, rtol=0, atol=1e-6)
        torch.testing.assert_close(seeded.accuracy_per_step, explicit.accuracy_per_step)
        for a, b in zip(grads, grads_explicit, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        # The dense design regenerates the same draws from the same seed.
        dense = cpc_info_nce(
            pred,
            z,
            num_negatives=N,
            seed=1234,
            exclude_positive=exclude,
            backend="fused",
            design="dense",
        )
        torch.testing.assert_close(dense.loss, explicit.loss, rtol=1e-6, atol=1e-6)
        expected = _oracle(pred, z, idx, 1.0)
        assert abs(seeded.loss.item() - expected[0].item()) < 1e-5


def test_philox_default_design_and_reproducibility():
    pred, z, _ = _cpc_inputs(2, 2, 9, 16, 5)
    a = cpc_info_nce(pred, z, num_negatives=5, seed=7, backend="fused")
    b = cpc_info_nce(pred, z, num_negatives=5, seed=7, backend="fused")
    c = cpc_info_nce(pred, z, num_negatives=5, seed=8, backend="fused")
    assert a.loss.item() == b.loss.item() != c.loss.item()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    d = cpc_info_nce(pred, z, num_negatives=5, generator=g1, backend="fused")
    e = cpc_info_nce(pred, z, num_negatives=5, generator=g2, backend="fused")
    assert d.loss.item() == e.loss.item()
    with pytest.raises(UserInputError, match="philox"):
        cpc_info_nce(
            pred,
            z,
            neg_index=torch.zeros(2, 2, 9, 3, dtype=torch.long, device=DEVICE),
            backend="fused",
            design="philox",
        )


def test_deterministic_gradients_are_bitwise_reproducible():
    pred, z, neg = _cpc_inputs(2, 3, 13, 32, 6)
    runs = []
    for _ in range(2):
        out = cpc_info_nce(
            pred, z, neg_index=neg, backend="fused", design="gather", deterministic=True
        )
        runs.append(torch.autograd.grad(out.loss, [pred, z]))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize("form", ["cpc", "general"])
def test_torch_deterministic_flag_selects_the_deterministic_backward(form, monkeypatch):
    from cpc_fast.kernels import info_nce as launchers

    segment_passes = []
    segment_dk = launchers._segment_dk
    monkeypatch.setattr(
        launchers, "_segment_dk", lambda *a: segment_passes.append(1) or segment_dk(*a)
    )
    pred, z, neg = _cpc_inputs(2, 3, 9, 16, 4)

    def backward(**kwargs):
        if form == "cpc":
            loss = cpc_info_nce(pred, z, neg_index=neg, backend="fused", design="gather",
                                **kwargs).loss  # fmt: skip
        else:
            q, keys = pred[0, 0], z[0]
            pos = torch.arange(1, 10, device=DEVICE) % 9
            loss = info_nce(q, keys, pos, neg[0, 0], backend="fused", **kwargs)
        torch.autograd.grad(loss, [pred, z])
        return len(segment_passes)

    assert backward() == 0  # today's default: atomics
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert backward() == 1  # the run asked for determinism: no atomics
        assert backward(deterministic=False) == 1  # an explicit choice still wins
    finally:
        torch.use_deterministic_algorithms(previous)


def test_dense_dz_pass_fills_an_h100_at_the_papers_shape(monkeypatch):
    # ceil(L / 32) * B = 256 programs were 2 per SM of an H100's 132, each 192 serial steps.
    from cpc_fast.kernels import info_nce as launchers

    grids = {}

    class _Grid:  # records the launch grid instead of running the kernel
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: grids.setdefault(self.name, grid)

    for name in ("_dense_bwd_dq_kernel", "_dense_bwd_dz_kernel"):
        monkeypatch.setattr(launchers, name, _Grid(name))
    B, K, L, D, N = 8, 12, 1000, 128, 50
    q = torch.empty(B, L, K, D).permute(0, 2, 1, 3)
    seed = torch.zeros(1, dtype=torch.int64)
    rows = torch.empty(B, K, L)
    options = launchers.Options(N, 1.0, design="dense")
    launchers.dense_backward(rows, q, torch.empty(B, L, D), None, seed, rows, options)
    f_blocks, b, splits = grids["_dense_bwd_dz_kernel"]
    assert (f_blocks, b) == (32, 8) and f_blocks * b * splits >= 4 * launchers.H100_SMS


def test_dense_dz_splits_are_reproducible_and_agree_with_one(monkeypatch):
    from cpc_fast.kernels import info_nce as launchers

    pred, z, neg = _cpc_inputs(2, 5, 11, 24, 6)

    def grads():
        out = cpc_info_nce(pred, z, neg_index=neg, backend="fused", design="dense")
        return torch.autograd.grad(out.loss, [pred, z])

    assert launchers.dz_splits(11, 2, 5, launchers.H100_SMS) == 5  # one step per split
    split, again = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(split, again, strict=True))
    monkeypatch.setattr(launchers, "DZ_PROGRAMS_PER_SM", 0)  # one program per frame block
    assert launchers.dz_splits(11, 2, 5, launchers.H100_SMS) == 1
    whole = grads()
    torch.testing.assert_close(split[1], whole[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(split[0], whole[0])  # dq has its own pass


@pytest.mark.parametrize("design", ["philox", "gather", "dense", "general"])
def test_three_calls_from_the_loss_to_the_kernel_launch(design, monkeypatch):
    # The path a reader follows: the loss calls the op, the op calls the launcher, the
    # launcher launches (torch's dispatch frames in between are not the project's).
    import traceback
    from pathlib import Path

    from cpc_fast.kernels import info_nce as launchers

    root = Path(__file__).resolve().parents[1]
    project = (str(root / "cpc_fast"), str(root / "kernels"))
    chains = []

    class _Launch:
        def __getitem__(self, grid):
            names = [f.name for f in traceback.extract_stack() if f.filename.startswith(project)]
            chains.append(names[next(i for i, n in enumerate(names) if "info_nce" in n) :])
            return lambda *args, **kwargs: None

    for name in ("_info_nce_fwd_kernel", "_dense_fwd_kernel"):
        monkeypatch.setattr(launchers, name, _Launch())
    pred, z, neg = _cpc_inputs(2, 3, 9, 16, 4)
    with torch.no_grad():
        if design == "general":
            pos = torch.arange(1, 10, device=DEVICE) % 9
            info_nce(pred[0, 0], z[0], pos, neg[0, 0], backend="fused")
            want = ["info_nce", "fused_info_nce", "gather_forward"]
        else:
            given = {"neg_index": neg} if design == "gather" else {"num_negatives": 4, "seed": 1}
            cpc_info_nce(pred, z, backend="fused", design=design, **given)
            launcher = "dense_forward" if design == "dense" else "gather_forward"
            want = ["cpc_info_nce", "fused_info_nce", launcher]
    assert chains == [want]


def test_contiguous_and_strided_inputs_agree():
    pred, z, neg = _cpc_inputs(2, 3, 9, 20, 4)
    strided = cpc_info_nce(pred, z, neg_index=neg, backend="fused", design="gather")
    # z with non-unit inner stride (the encoder's transpose) and a contiguous predictions copy.
    z_t = z.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    pred_c = pred.detach().contiguous().requires_grad_()
    other = cpc_info_nce(
        pred_c,
        z_t,
        neg_index=neg[..., :].transpose(2, 3).contiguous().transpose(2, 3),
        backend="fused",
        design="gather",
    )
    torch.testing.assert_close(strided.loss, other.loss)
    ga = torch.autograd.grad(strided.loss, [pred, z])
    gb = torch.autograd.grad(other.loss, [pred_c, z_t])
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b)


def test_fused_under_autocast():
    B, K, L, D, N = 2, 3, 9, 16, 4
    lin = torch.nn.Linear(8, K * D).to(DEVICE)
    c = torch.randn(B, L, 8, device=DEVICE)
    z = torch.randn(B, L, D, device=DEVICE, requires_grad=True)
    neg = torch.randint(0, L, (B, K, L, N), device=DEVICE)
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16):
        pred = lin(c).view(B, L, K, D).permute(0, 2, 1, 3)
        assert pred.dtype == torch.bfloat16
        out = cpc_info_nce(pred, z, neg_index=neg, backend="fused", design="gather")
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert lin.weight.grad is not None and z.grad.dtype == torch.float32
    expected = _oracle(pred, z, neg, 1.0)
    assert abs(out.loss.item() - expected[0].item()) < 1e-5


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_general_info_nce_fused(deterministic, index_dtype):
    g = torch.Generator().manual_seed(5)
    M, Nk, D, N = 11, 7, 59, 6
    q = torch.randn(M, D, generator=g).to(DEVICE).requires_grad_()
    keys = torch.randn(D, Nk, generator=g).to(DEVICE).t().requires_grad_()  # strided keys
    pos = torch.randint(0, Nk, (M,), generator=g).to(DEVICE, index_dtype)
    neg = torch.randint(0, Nk, (M, N), generator=g).to(DEVICE, index_dtype)
    neg[0] = pos[0]
    neg[1, :3] = 2
    for reduction in ("mean", "sum", "none"):
        loss, correct = info_nce(
            q,
            keys,
            pos,
            neg,
            0.6,
            reduction,
            backend="fused",
            deterministic=deterministic,
            return_correct=True,
        )
        rows, ok, _ = oracle_rows(q.detach().cpu(), keys.detach().cpu(), pos.cpu(), neg.cpu(), 0.6)
        expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
        torch.testing.assert_close(loss.detach().cpu().double(), expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(correct.cpu(), ok) and not correct[0]
    gq, gk = torch.autograd.grad(loss.sum(), [q, keys])
    q64 = q.detach().cpu().double().requires_grad_()
    k64 = keys.detach().cpu().double().requires_grad_()
    eq, ek = torch.autograd.grad(
        oracle_rows(q64, k64, pos.cpu(), neg.cpu(), 0.6)[0].sum(), [q64, k64]
    )
    torch.testing.assert_close(gq.cpu().double(), eq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gk.cpu().double(), ek, atol=1e-5, rtol=1e-5)


def test_general_info_nce_same_tensor_for_queries_and_keys():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(10, 23, generator=g).to(DEVICE).requires_grad_()
    pos = (torch.arange(10) + 1) % 10
    neg = torch.randint(0, 10, (10, 5), generator=g)
    loss = info_nce(x, x, pos.to(DEVICE), neg.to(DEVICE), backend="fused")
    grad = torch.autograd.grad(loss, x)[0]
    x64 = x.detach().cpu().double().requires_grad_()
    expected = torch.autograd.grad(oracle_rows(x64, x64, pos, neg)[0].mean(), x64)[0]
    torch.testing.assert_close(grad.cpu().double(), expected, atol=1e-6, rtol=1e-5)


def test_fused_matches_reference_backend_for_the_same_indices():
    pred, z, neg = _cpc_inputs(2, 3, 13, 40, 8)
    fused = cpc_info_nce(pred, z, neg_index=neg, backend="fused")
    reference = cpc_info_nce(pred, z, neg_index=neg, backend="reference")
    torch.testing.assert_close(fused.loss, reference.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.accuracy_per_step, reference.accuracy_per_step)


# --- compiled kernels on a GPU, at the paper's shape (bench/gpu_check.sh) -------------------


PAPER_SHAPE = (8, 12, 1000, 128, 50)
# A large but plausible batch: 64 utterances of 20 s, D = 256, N = 100.
LARGE_SHAPE = (64, 12, 2000, 256, 100)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("design", ["philox", "gather", "gather-deterministic", "dense"])
def test_paper_shape_fused_matches_reference_on_cuda(dtype, design):
    _fused_matches_reference_on_cuda(PAPER_SHAPE, dtype, design)


@pytest.mark.cuda
@pytest.mark.parametrize("design", ["philox", "gather-deterministic", "dense"])
def test_large_shape_fused_matches_reference_on_cuda(design):
    _fused_matches_reference_on_cuda(LARGE_SHAPE, torch.bfloat16, design)


def _fused_matches_reference_on_cuda(shape, dtype, design):
    B, K, L, D, N = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    pred = torch.randn(B, L, K, D, device="cuda", generator=g).permute(0, 2, 1, 3) * 0.1
    z = torch.randn(B, L, D, device="cuda", generator=g)
    pred = pred.to(dtype).requires_grad_()
    z = z.to(dtype).requires_grad_()
    kwargs = {"gather-deterministic": {"design": "gather", "deterministic": True}}.get(
        design, {"design": design}
    )
    if design in ("philox", "dense"):
        neg = philox_negatives(11, B, K, L, N, device="cuda")
        fused = cpc_info_nce(pred, z, num_negatives=N, seed=11, backend="fused", **kwargs)
    else:
        neg = torch.randint(0, L, (B, K, L, N), device="cuda", generator=g)
        fused = cpc_info_nce(pred, z, neg_index=neg, backend="fused", **kwargs)
    ref = cpc_info_nce(pred.float(), z.float(), neg_index=neg, backend="reference")
    fg = torch.autograd.grad(fused.loss, [pred, z])
    rg = torch.autograd.grad(ref.loss, [pred, z])
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(fused.loss, ref.loss, atol=tol, rtol=tol)
    torch.testing.assert_close(fused.loss_per_step, ref.loss_per_step, atol=tol, rtol=tol)
    assert (fused.accuracy_per_step - ref.accuracy_per_step).abs().max() < 1e-3
    # Both gradients end in the input dtype: bf16 rounding (2**-9 relative) on each side.
    grad_tol = 2e-4 if dtype == torch.float32 else 2**-6
    for a, b in zip(fg, rg, strict=True):
        scale = b.float().abs().max()
        assert (a.float() - b.float()).abs().max() <= grad_tol * scale
