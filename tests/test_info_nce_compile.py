"""The InfoNCE custom ops under ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``.

``fullgraph=True`` fails on any graph break, so these tests prove a compiled model traces
through the loss (general and CPC forms, both backends, and the wav2vec 2.0 loss) instead of
running it eagerly; values and gradients must equal the eager ones. The fused ops run in
Triton's interpreter on CPU, compiled kernels on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from cpc_fast.integrations.wav2vec2 import contrastive_loss, sample_negative_indices
from cpc_fast.losses import IGNORE_INDEX
from cpc_fast.losses.info_nce import cpc_info_nce, info_nce
from cpc_fast.losses.info_nce_reference import ReferenceOptions, reference_info_nce

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]


def _general(M=10, Nk=7, D=12, N=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(M, D, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    keys = torch.randn(Nk, D, generator=g, dtype=dtype)
    keys[3] = keys[1]  # a duplicate by value
    keys = keys.to(DEVICE).requires_grad_()
    pos = torch.randint(0, Nk, (M,), generator=g)
    pos[-1] = IGNORE_INDEX
    neg = torch.randint(0, Nk, (M, N), generator=g)
    neg[0, 0] = pos[0]
    return q, keys, pos.to(DEVICE), neg.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cosine, mask", [(False, "none"), (True, "value"), (False, "index")])
def test_opcheck_reference_op(dtype, cosine, mask):
    q, keys, pos, neg = _general(dtype=dtype)
    options = ReferenceOptions(1 / 0.3, cosine, mask, False)
    torch.library.opcheck(reference_info_nce, (q, keys, pos, neg, *options))


@needs_triton
def test_opcheck_fused_ops():
    from cpc_fast.losses._fused import FusedOptions, fused_info_nce

    q, keys, pos, neg = _general()
    general = FusedOptions(4, 2.0, cosine=True, mask="value", correct_on_tie=True)
    torch.library.opcheck(
        fused_info_nce,
        (q[None, None], keys[None], pos[None, None], neg[None, None], None, *general),
    )
    B, K, L, D, N = 2, 3, 7, 12, 5
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(B, L, K, D, generator=g).permute(0, 2, 1, 3).to(DEVICE).requires_grad_()
    z = torch.randn(B, L, D, generator=g).to(DEVICE).requires_grad_()
    seed = torch.tensor(123)
    for design, deterministic in (("gather", True), ("dense", False)):
        cpc = FusedOptions(
            N, 1.0, exclude_positive=True, seq_len=L, design=design, deterministic=deterministic
        )
        torch.library.opcheck(fused_info_nce, (pred, z, None, None, seed, *cpc))


def _compiled_matches_eager(fn, *inputs, backend="aot_eager"):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    got, want = compiled(*inputs), fn(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_general_info_nce_in_a_fullgraph_compiled_model(backend):
    q, keys, pos, neg = _general()
    head = torch.nn.Linear(q.shape[1], q.shape[1]).to(DEVICE)

    def step(x, k):
        return (
            info_nce(
                head(torch.tanh(x)),
                k * 2,
                pos,
                neg,
                0.5,
                similarity="cosine",
                mask_duplicates="value",
                backend=backend,
            )
            * 3
        )

    _compiled_matches_eager(step, q, keys)


def test_reference_info_nce_compiles_with_inductor_on_cpu():
    q, keys, pos, neg = _general()

    def step(x, k):
        return info_nce(torch.relu(x), k, pos, neg, 0.2, "sum", backend="reference")

    _compiled_matches_eager(step, q, keys, backend="inductor")


@pytest.mark.parametrize(
    "backend, kwargs",
    [
        ("reference", {"neg_index": "given"}),
        ("reference", {"num_negatives": 4}),
        pytest.param("fused", {"neg_index": "given", "design": "gather"}, marks=needs_triton),
        pytest.param("fused", {"num_negatives": 4, "seed": 5}, marks=needs_triton),
        pytest.param(
            "fused", {"num_negatives": 4, "design": "dense", "seed": 5}, marks=needs_triton
        ),
        # Explicit draws from a seed need a torch.Generator, which Dynamo cannot trace.
        pytest.param(
            "fused",
            {"num_negatives": 4, "negatives_from": "batch", "share_negatives_across_steps": True},
            marks=needs_triton,
        ),
    ],
)
def test_cpc_info_nce_in_a_fullgraph_compiled_model(backend, kwargs):
    B, K, L, D = 2, 3, 9, 8
    g = torch.Generator().manual_seed(2)
    z = torch.randn(B, L, D, generator=g).to(DEVICE).requires_grad_()
    head = torch.nn.Linear(D, K * D).to(DEVICE)
    if kwargs.get("neg_index") == "given":
        kwargs = {**kwargs, "neg_index": torch.randint(0, L, (B, K, L, 4), generator=g).to(DEVICE)}
    random = "neg_index" not in kwargs and "seed" not in kwargs

    def step(zz):
        pred = head(zz).view(B, L, K, D).permute(0, 2, 1, 3)
        return cpc_info_nce(pred, zz, backend=backend, **kwargs).loss

    if random:  # compiled draws differ from eager ones: check it traces and runs
        torch._dynamo.reset()
        loss = torch.compile(step, fullgraph=True, backend="aot_eager")(z)
        assert torch.isfinite(loss) and torch.autograd.grad(loss, z)[0].abs().sum() > 0
    else:
        _compiled_matches_eager(step, z)


@needs_triton
def test_fused_cpc_loss_compiles_with_inductor_on_cpu():
    B, K, L, D, N = 2, 3, 9, 8, 4
    z = torch.randn(B, L, D, generator=torch.Generator().manual_seed(3)).requires_grad_()
    head = torch.nn.Linear(D, K * D)

    def step(zz):
        pred = head(zz).view(B, L, K, D).permute(0, 2, 1, 3)
        return cpc_info_nce(pred, zz, num_negatives=N, seed=3, backend="fused").loss

    _compiled_matches_eager(step, z.to(DEVICE), backend="inductor")


@pytest.mark.parametrize("backend", BACKENDS)
def test_wav2vec2_loss_in_a_fullgraph_compiled_model(backend):
    B, L, D, N = 2, 11, 6, 3
    g = torch.Generator().manual_seed(4)
    states = torch.randn(B, L, D, generator=g).to(DEVICE).requires_grad_()
    quantized = torch.randn(B, L, D, generator=g).to(DEVICE).requires_grad_()
    mask = torch.rand(B, L, generator=g) < 0.5
    mask[:, :2] = True
    mask = mask.to(DEVICE)
    neg = sample_negative_indices(mask, N, generator=torch.Generator(DEVICE).manual_seed(0))

    def step(s, qz):
        return contrastive_loss(s * 1.5, qz, mask, neg, backend=backend)

    _compiled_matches_eager(step, states, quantized)
