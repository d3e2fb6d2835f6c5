"""CPC_audio's criterion through ``cpc_info_nce``: negatives from the whole batch, shared by
the steps, score = dot / D (temperature D), the window W = L - K, argmax accuracy.

``_cpc_audio_criterion`` re-implements ``CPCUnsupersivedCriterion`` (facebookresearch/
CPC_audio, ``cpc/criterion/criterion.py``) from its published formula, in float64: for each
step k = 1..K the candidates of window frame t are [z[b, t + k]; the N shared negatives],
scored by the mean over D of prediction * candidate, with cross-entropy against label 0
(mean over B·W rows) and accuracy = share of rows whose argmax is 0 (the first maximum, so a
tie with the positive counts). Batch negatives and the window are also checked against the
float64 oracle on both backends, with gradients.
"""

from __future__ import annotations

import os

import pytest
import torch
from info_nce_oracle import oracle_cpc, oracle_grads

from cpc_fast.errors import UserInputError
from cpc_fast.losses import sample_negatives
from cpc_fast.losses.info_nce import cpc_info_nce

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]


def _cpc_audio_negatives(B, L, W, N, g):
    """CPC_audio's sampleClean draw: frame (t + r) mod L, r in [1, L), of a random sequence,
    as flat rows into B·L: (B, N, W)."""
    batch = torch.randint(0, B, (B, N, W), generator=g)
    shift = torch.randint(1, L, (B, N, W), generator=g)
    frame = (shift + torch.arange(W).view(1, 1, W)) % L
    return frame + batch * L


def _cpc_audio_criterion(predictions, z, negatives):
    """predictions (B, K, W, D) (predictor k applied to c[:, :W]), z (B, L, D), negatives
    (B, N, W) flat rows -> per-step losses (K,) and accuracies (K,), float64."""
    B, K, W, D = predictions.shape
    neg = z.reshape(-1, D)[negatives]  # (B, N, W, D)
    losses, accuracies = [], []
    for k in range(1, K + 1):
        positive = z[:, k : k + W].unsqueeze(1)  # (B, 1, W, D)
        candidates = torch.cat([positive, neg], 1)  # (B, N + 1, W, D)
        scores = (predictions[:, k - 1].unsqueeze(1) * candidates).mean(3)  # (B, N + 1, W)
        scores = scores.permute(0, 2, 1).reshape(B * W, -1)
        label = torch.zeros(B * W, dtype=torch.long)
        losses.append(torch.nn.functional.cross_entropy(scores, label))
        accuracies.append((scores.max(1).indices == label).double().sum() / (B * W))
    return torch.stack(losses), torch.stack(accuracies)


def _inputs(B=3, K=4, L=13, D=24, N=9, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    W = L - K
    c = torch.randn(B, L, 16, generator=g)
    predictors = torch.randn(K, 16, D, generator=g) / 4
    predictions = torch.einsum("blc,kcd->bkld", c[:, :W], predictors)  # (B, K, W, D)
    z = torch.randn(B, L, D, generator=g)
    negatives = _cpc_audio_negatives(B, L, W, N, g)
    negatives[0, 0, 0] = 0 * L + 0 + 1  # a negative that is the positive of step 1: a tie
    negatives[1, :, 2] = 1 * L + 2 + 3  # all of row (1, 2) at step 3's positive
    return (
        predictions.to(DEVICE, dtype).requires_grad_(),
        z.to(DEVICE, dtype).requires_grad_(),
        negatives,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_reproduces_cpc_audio_loss_per_step_and_accuracy(backend):
    predictions, z, negatives = _inputs()
    D = z.shape[2]
    neg_index = negatives.permute(0, 2, 1).unsqueeze(1).to(DEVICE)  # (B, 1, W, N): shared
    out = cpc_info_nce(
        predictions,
        z,
        neg_index=neg_index,
        temperature=D,
        negatives_from="batch",
        correct_on_tie=True,
        backend=backend,
    )
    losses, accuracies = _cpc_audio_criterion(
        predictions.detach().cpu().double(), z.detach().cpu().double(), negatives
    )
    torch.testing.assert_close(out.loss_per_step.cpu().double(), losses, rtol=1e-5, atol=1e-6)
    rows = predictions.shape[0] * predictions.shape[2]  # B·W rows per step: counts must agree
    assert torch.equal((out.accuracy_per_step.cpu().double() * rows).round(), accuracies * rows)
    # CPC_audio trains on the sum of its per-step losses; every step has the same W rows.
    torch.testing.assert_close(out.loss_per_step.sum(), out.loss * len(losses))
    assert 0 < accuracies.min() and accuracies.max() < 1
    # The strict convention differs on the forced ties: the option is what matches.
    strict = cpc_info_nce(
        predictions, z, neg_index=neg_index, temperature=D, negatives_from="batch", backend=backend
    )
    assert (strict.accuracy_per_step.cpu().double() < accuracies).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [True, False], ids=["T=L-K", "T=L"])
def test_batch_negatives_match_the_oracle_with_gradients(backend, window):
    B, K, L, D, N = 2, 3, 11, 20, 6
    g = torch.Generator().manual_seed(1)
    T = L - K if window else L
    pred = torch.randn(B, T, K, D, generator=g).permute(0, 2, 1, 3).to(DEVICE).requires_grad_()
    z = torch.randn(B, L, D, generator=g).to(DEVICE).requires_grad_()
    neg = torch.randint(0, B * L, (B, K, T, N), generator=g)
    out = cpc_info_nce(
        pred, z, neg_index=neg.to(DEVICE), temperature=0.7, negatives_from="batch", backend=backend
    )
    gp, gz = torch.autograd.grad(out.loss, [pred, z])
    expected = oracle_cpc(
        pred.detach().cpu().double(), z.detach().cpu().double(), neg, 0.7, across_batch=True
    )
    torch.testing.assert_close(out.loss.cpu().double(), expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss_per_step.cpu().double(), expected[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.accuracy_per_step.cpu().double(), expected[2])
    _, (ep, ez) = oracle_grads(
        lambda p, zz: oracle_cpc(p, zz, neg, 0.7, across_batch=True)[0], pred, z
    )
    torch.testing.assert_close(gp.cpu().double(), ep, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gz.cpu().double(), ez, rtol=1e-5, atol=1e-7)


@needs_triton
@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_batch_negatives_deterministic_and_atomic_agree(deterministic):
    predictions, z, negatives = _inputs(seed=2)
    neg_index = negatives.permute(0, 2, 1).unsqueeze(1).to(DEVICE)
    kwargs = {"neg_index": neg_index, "negatives_from": "batch", "temperature": 24}
    fused = cpc_info_nce(predictions, z, backend="fused", deterministic=deterministic, **kwargs)
    reference = cpc_info_nce(predictions, z, backend="reference", **kwargs)
    for a, b in zip(
        torch.autograd.grad(fused.loss, [predictions, z]),
        torch.autograd.grad(reference.loss, [predictions, z]),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_own_shared_batch_draws_are_the_sampler_s(backend):
    predictions, z, _ = _inputs(seed=3)
    B, K, W, D = predictions.shape
    L = z.shape[1]
    kwargs = {"negatives_from": "batch", "temperature": D, "backend": backend}
    drawn = cpc_info_nce(
        predictions, z, num_negatives=7, share_negatives_across_steps=True, seed=11, **kwargs
    )
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    neg = sample_negatives(
        B, 1, L, 7, device=DEVICE, generator=generator, rows=W, across_batch=True
    )
    assert neg.shape == (B, 1, W, 7) and neg.max() < B * L
    given = cpc_info_nce(predictions, z, neg_index=neg, **kwargs)
    torch.testing.assert_close(drawn.loss, given.loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"negatives_from": "utterance"}, "`negatives_from`"),
        ({"share_negatives_across_steps": True, "exclude_positive": True}, "`exclude_positive`"),
        ({"neg_index": torch.full((3, 1, 9, 2), 39)}, "`neg_index` holds index 39"),
    ],
)
def test_bad_arguments_name_them(kwargs, match):
    predictions, z, _ = _inputs()
    with pytest.raises(UserInputError, match=match):
        cpc_info_nce(
            predictions,
            z,
            negatives_from=kwargs.pop("negatives_from", "batch"),
            backend="reference",
            **kwargs,
        )


@needs_triton
def test_fused_designs_that_cannot_take_batch_negatives_say_so():
    predictions, z, _ = _inputs()
    for design in ("philox", "dense"):
        with pytest.raises(UserInputError, match=f"`design='{design}'`"):
            cpc_info_nce(predictions, z, negatives_from="batch", design=design, backend="fused")
