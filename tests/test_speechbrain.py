"""``cpc_fast.integrations.speechbrain``: SpeechBrain's wav2vec 2.0 ``ContrastiveLoss`` and
``sample_negatives``.

``_speechbrain_loss`` re-implements the published formula in float64 (SpeechBrain needs
torchaudio, which has no build for this torch): logits cos(x, [y; negs]) over (N + 1, B, T),
negatives equal to the target by value at -inf, rows time-major, cross-entropy of
logits / logit_temp with target 0 summed, accuracy = share of rows whose argmax is 0 (the
first maximum: a tie counts). ``_speechbrain_sampler`` re-implements SpeechBrain's sampler
from its description (offset b·(T - 1)), to show that the checks here catch its bug.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from sampler_checks import is_uniform

from cpc_fast.errors import UserInputError
from cpc_fast.integrations import speechbrain

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]


def _speechbrain_loss(x, y, negs, logit_temp):
    x, y, negs = x.double(), y.double(), negs.double()
    neg_is_pos = (y == negs).all(-1)
    logits = F.cosine_similarity(x.unsqueeze(0), torch.cat([y.unsqueeze(0), negs]), dim=-1)
    logits = torch.cat([logits[:1], logits[1:].masked_fill(neg_is_pos, float("-inf"))])
    logits = logits.transpose(0, 2).reshape(-1, logits.shape[0])  # (T·B, N + 1)
    target = torch.zeros(logits.shape[0], dtype=torch.long)
    loss = F.cross_entropy(logits / logit_temp, target, reduction="sum")
    return loss, (logits.argmax(-1) == 0).double().mean()


def _inputs(B=3, T=8, C=12, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g)
    y = torch.randn(B, T, C, generator=g)
    y[2, 6] = y[2, 1]  # equal targets: drawing frame 1 for row (2, 6) is masked by value
    neg = speechbrain.sample_negative_indices(B, T, N, generator=g)
    neg[2, 6, 1] = 2 * T + 1
    x[0, 2] = 0  # every logit of row (0, 2) is 0: SpeechBrain's argmax calls it correct
    return x, y, neg


def _values(y, neg):
    B, T, C = y.shape
    return y.reshape(B * T, C)[neg.reshape(-1)].view(B, T, -1, C).permute(2, 0, 1, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("given", ["indices", "values"])
def test_loss_accuracy_and_gradients_match_speechbrain_s_formula(backend, given):
    x, y, neg = _inputs()
    xs, ys = x.to(DEVICE).requires_grad_(), y.to(DEVICE).requires_grad_()
    negs = neg.to(DEVICE) if given == "indices" else _values(ys, neg.to(DEVICE))
    loss, accuracy = speechbrain.ContrastiveLoss(0.1, backend=backend)(xs, ys, negs)
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    want, want_accuracy = _speechbrain_loss(x64, y64, _values(y64, neg), 0.1)
    torch.testing.assert_close(loss.cpu().double(), want, rtol=1e-5, atol=1e-5)
    rows = x.shape[0] * x.shape[1]
    assert round(float(accuracy) * rows) == round(float(want_accuracy) * rows)
    assert 0 < want_accuracy < 1
    gx, gy = torch.autograd.grad(loss, [xs, ys])
    wx, wy = torch.autograd.grad(want, [x64, y64])
    torch.testing.assert_close(gx.cpu().double(), wx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gy.cpu().double(), wy, rtol=1e-4, atol=1e-6)


def test_a_tie_counts_as_correct():
    x, y, neg = _inputs(seed=1)
    x.zero_()  # all logits 0 in every row: SpeechBrain's argmax picks the positive
    _, accuracy = speechbrain.ContrastiveLoss(0.1)(x, y, neg)
    assert accuracy == _speechbrain_loss(x, y, _values(y, neg), 0.1)[1] == 1.0


def test_values_sampler_is_the_index_sampler_gathered():
    y = torch.randn(2, 5, 3)
    a = speechbrain.sample_negatives(y, 4, generator=torch.Generator().manual_seed(2))
    idx = speechbrain.sample_negative_indices(2, 5, 4, generator=torch.Generator().manual_seed(2))
    assert a.shape == (4, 2, 5, 3) and torch.equal(a, _values(y, idx))


def _speechbrain_sampler(B, T, N, g):
    """SpeechBrain's ``sample_negatives`` as indices (re-implemented from its description)."""
    t = torch.arange(T).repeat_interleave(N)
    idx = torch.randint(0, T - 1, (B, T * N), generator=g)
    idx += idx >= t
    return (idx + torch.arange(B).view(B, 1) * (T - 1)).view(B, T, N)


@pytest.mark.parametrize("name", ["ours", "speechbrain"])
def test_sampler_draws_the_other_frames_of_the_own_utterance(name):
    B, T, N = 4, 6, 1800  # the case: utterance 3 took 884 of 1,800 from elsewhere
    g = torch.Generator().manual_seed(3)
    if name == "ours":
        neg = speechbrain.sample_negative_indices(B, T, N, generator=g)
    else:
        neg = _speechbrain_sampler(B, T, N, g)
    ok = all(
        is_uniform(neg[b, t], torch.tensor([f for f in range(T) if f != t]) + b * T, B * T)
        for b, t in [(0, 0), (1, 2), (3, 5), (3, 0)]
    )
    assert ok if name == "ours" else not ok


def test_sampler_is_seeded_and_on_the_device():
    g = [torch.Generator(DEVICE).manual_seed(4) for _ in range(2)]
    a, b = (speechbrain.sample_negative_indices(2, 5, 3, device=DEVICE, generator=x) for x in g)
    assert a.device.type == DEVICE and torch.equal(a, b)


def test_bad_arguments_name_them():
    with pytest.raises(UserInputError, match="T >= 2"):
        speechbrain.sample_negative_indices(2, 1, 3)
    with pytest.raises(UserInputError, match="`num_neg`"):
        speechbrain.sample_negative_indices(2, 4, 0)
    with pytest.raises(UserInputError, match="`logit_temp`"):
        speechbrain.ContrastiveLoss(0)
    x, y, neg = _inputs()
    with pytest.raises(UserInputError, match="`negs` indices must have shape"):
        speechbrain.ContrastiveLoss(0.1)(x, y, neg[:, :-1])
    with pytest.raises(UserInputError, match="`negs` holds index"):
        speechbrain.ContrastiveLoss(0.1)(x, y, neg + 100)
