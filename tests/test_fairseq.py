"""fairseq wav2vec 2.0 through ``cpc_fast.integrations.fairseq``: the loss and accuracy of
``compute_preds`` + ``Wav2vecCriterion(infonce=True)``, and the sampler's distribution.

``_fairseq_loss`` re-implements the published formula in float64 (fairseq cannot be
installed here): logits cos(x, [y; negatives]) / logit_temp over (N + 1, B, T), negatives
equal to the positive by value at -inf, rows time-major, cross-entropy with target 0 summed
(or per row), correct = argmax is 0 and argmin is not 0. ``_fairseq_sampler`` re-implements
fairseq's ``sample_negatives`` from its description, to show that the support and
uniformity checks here catch each of its bugs.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from sampler_checks import is_uniform

from cpc_fast.errors import UserInputError
from cpc_fast.integrations import fairseq

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]


def _fairseq_loss(x, y, negs, logit_temp=0.1, reduce=True):
    """x, y (B, T, C), negs (N, B, T, C) -> loss, correct count (float64)."""
    x, y, negs = x.double(), y.double(), negs.double()
    neg_is_pos = (y == negs).all(-1)  # (N, B, T)
    targets = torch.cat([y.unsqueeze(0), negs], 0)  # (N + 1, B, T, C)
    logits = F.cosine_similarity(x.unsqueeze(0), targets, dim=-1) / logit_temp
    logits = torch.cat([logits[:1], logits[1:].masked_fill(neg_is_pos, float("-inf"))])
    logits = logits.transpose(0, 2).reshape(-1, logits.shape[0])  # (T·B, N + 1)
    target = torch.zeros(logits.shape[0], dtype=torch.long)
    loss = F.cross_entropy(logits, target, reduction="sum" if reduce else "none")
    top, bottom = logits.argmax(-1) == 0, logits.argmin(-1) == 0
    return loss, int((top & ~bottom).sum())


def _values(y, neg_index):
    """(B, T, N) flat indices -> (N, B, T, C) values, as fairseq's sampler hands them."""
    B, T, C = y.shape
    return y.reshape(B * T, C)[neg_index.reshape(-1)].view(B, T, -1, C).permute(2, 0, 1, 3)


def _inputs(B=3, T=9, C=16, N=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g)
    y = torch.randn(B, T, C, generator=g)
    y[1, 4] = y[1, 2]  # a duplicate target: drawing frame 2 for row (1, 4) is masked by value
    neg = fairseq.sample_negative_indices(B, T, N, generator=g)
    neg[1, 4, 0] = 1 * T + 2
    x[0, 3] = 0  # a zero context: every logit of row (0, 3) is 0, a tie the rule calls wrong
    x[2, 5] = y[2, 5] * 3  # parallel to its positive: cosine 1, the argmax
    neg[2, 5] = 2 * T + 5  # ... and every negative is that same target: all masked, correct
    neg[2, 6, :2] = 2 * T + 6  # two of row (2, 6)'s negatives are its positive: masked
    return x, y, neg


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("given", ["indices", "values"])
def test_loss_accuracy_and_gradients_match_fairseq_s_formula(backend, given):
    x, y, neg = _inputs()
    B, T, _ = x.shape
    xs, ys = x.to(DEVICE).requires_grad_(), y.to(DEVICE).requires_grad_()
    negatives = neg.to(DEVICE) if given == "indices" else _values(ys, neg.to(DEVICE))
    out = fairseq.contrastive_loss(xs, ys, negatives, backend=backend)
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    want, correct = _fairseq_loss(x64, y64, _values(y64, neg))
    torch.testing.assert_close(out.loss.cpu().double(), want, rtol=1e-5, atol=1e-5)
    assert int(out.correct) == correct and out.count == out.sample_size == B * T
    assert 0 < correct < B * T - 1  # the zero-context row is wrong, so not all are correct
    gx, gy = torch.autograd.grad(out.loss, [xs, ys])
    wx, wy = torch.autograd.grad(want, [x64, y64])
    torch.testing.assert_close(gx.cpu().double(), wx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gy.cpu().double(), wy, rtol=1e-4, atol=1e-6)


def test_unreduced_rows_are_time_major_like_the_criterion_s():
    x, y, neg = _inputs(seed=1)
    out = fairseq.contrastive_loss(x, y, neg, reduce=False)
    want, _ = _fairseq_loss(x, y, _values(y, neg), reduce=False)
    assert out.loss.shape == (x.shape[0] * x.shape[1],)
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-6)


def test_temperature_is_fairseq_s_logit_temp():
    x, y, neg = _inputs(seed=2)
    out = fairseq.contrastive_loss(x, y, neg, logit_temp=0.5)
    torch.testing.assert_close(
        out.loss.double(), _fairseq_loss(x, y, _values(y, neg), 0.5)[0], rtol=1e-5, atol=1e-5
    )


def _fairseq_sampler(B, T, n, cross, padding_count, g):
    """fairseq's ``sample_negatives`` as it is (re-implemented from its description): the
    reference the bugs are shown on. -> (B, T, n + cross) flat indices."""
    high = T - padding_count
    parts = []
    if n:
        idx = torch.randint(0, high - 1, (B, T * n), generator=g)
        idx += idx >= torch.arange(T).repeat_interleave(n).view(1, -1)
        parts.append(idx + torch.arange(B).view(B, 1) * high)
    if cross:
        idx = torch.randint(0, B * T - 1, (B, T * cross), generator=g)
        parts.append(idx + (idx >= torch.arange(T).repeat_interleave(cross).view(1, -1)))
    return torch.cat(parts, 1).view(B, T, n + cross)


def _sampler(name):
    if name == "ours":
        return lambda B, T, n, c, p, g: fairseq.sample_negative_indices(
            B, T, n, c, padding_count=p, generator=g
        )
    return _fairseq_sampler


def _same_utterance_ok(neg, B, T, valid, rows):
    for b, t in rows:
        support = torch.tensor([f for f in range(valid) if f != t]) + b * T
        if not is_uniform(neg[b, t], support, B * T):
            return False
    return True


def _cross_ok(neg, B, T, valid, rows):
    every = torch.tensor([b * T + f for b in range(B) for f in range(valid)])
    return all(is_uniform(neg[b, t], every[every != b * T + t], B * T) for b, t in rows)


ROWS = [(0, 0), (1, 3), (3, 5), (3, 0)]


@pytest.mark.parametrize("name", ["ours", "fairseq"])
def test_same_utterance_draws_without_padding(name):
    g = torch.Generator().manual_seed(3)
    neg = _sampler(name)(4, 6, 2000, 0, 0, g)
    assert neg.shape == (4, 6, 2000)
    assert _same_utterance_ok(neg, 4, 6, 6, ROWS)  # fairseq is right here too


@pytest.mark.parametrize("name", ["ours", "fairseq"])
def test_same_utterance_draws_with_padding(name):
    B, T, pad = 4, 8, 2
    neg = _sampler(name)(B, T, 2000, 0, pad, torch.Generator().manual_seed(4))
    ok = _same_utterance_ok(neg, B, T, T - pad, ROWS)
    assert ok if name == "ours" else not ok  # fairseq: offsets b·(T - padding)


@pytest.mark.parametrize("name", ["ours", "fairseq"])
def test_cross_sample_draws(name):
    B, T = 4, 6
    neg = _sampler(name)(B, T, 0, 3000, 0, torch.Generator().manual_seed(5))
    ok = _cross_ok(neg, B, T, T, ROWS)
    assert ok if name == "ours" else not ok  # fairseq: skips frame t, not b·T + t


@pytest.mark.parametrize("name", ["ours", "fairseq"])
def test_both_kinds_go_to_their_own_rows(name):
    B, T, n, c = 4, 6, 1500, 1500
    neg = _sampler(name)(B, T, n, c, 0, torch.Generator().manual_seed(6))
    ok = _same_utterance_ok(neg[..., :n], B, T, T, ROWS) and _cross_ok(neg[..., n:], B, T, T, ROWS)
    assert ok if name == "ours" else not ok  # fairseq: deals draws to the wrong rows


def test_padding_with_cross_samples_draws_valid_frames_only():
    B, T, pad = 3, 7, 3
    neg = fairseq.sample_negative_indices(
        B, T, 1500, 1500, padding_count=pad, generator=torch.Generator().manual_seed(7)
    )
    rows = [(0, 0), (2, 3), (1, 5)]  # (1, 5) is a padding row: no frame of its own to skip
    assert _same_utterance_ok(neg[..., :1500], B, T, T - pad, rows[:2])
    assert is_uniform(neg[1, 5, :1500], torch.arange(T - pad) + T, B * T)
    assert _cross_ok(neg[..., 1500:], B, T, T - pad, rows[:2])


def test_sampler_is_seeded_and_on_the_device():
    a = fairseq.sample_negative_indices(
        2, 5, 3, 2, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1)
    )
    b = fairseq.sample_negative_indices(
        2, 5, 3, 2, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1)
    )
    assert a.device.type == DEVICE and a.dtype == torch.int64 and torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"T": 1}, "T - padding_count >= 2"),
        ({"padding_count": 5}, "`padding_count`"),
        ({"num_negatives": -1}, "`num_negatives`"),
        ({"num_negatives": 0}, "`num_negatives` \\+ `cross_sample_negatives`"),
        ({"B": 0}, "`B`"),
    ],
)
def test_bad_sampler_arguments_name_them(kwargs, match):
    args = {"B": 2, "T": 5, "num_negatives": 3, **kwargs}
    with pytest.raises(UserInputError, match=match):
        fairseq.sample_negative_indices(**args)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x, y, n: (x, y[:, :-1], n), "`y` must have shape"),
        (lambda x, y, n: (x, y, n[:, :-1]), "`negatives` indices must have shape"),
        (lambda x, y, n: (x, y, n + 100), "`negatives` holds index"),
        (lambda x, y, n: (x, y, _values(y, n)[:, :, :-1]), "`negatives` values must have"),
        (lambda x, y, n: (x, y, n.bool()), "`negatives` must be float values"),
        (lambda x, y, n: (x[0], y, n), "`x` must be a 3-d"),
    ],
)
def test_bad_loss_arguments_name_them(change, match):
    with pytest.raises(UserInputError, match=match):
        fairseq.contrastive_loss(*change(*_inputs()))


def test_values_sampler_is_the_index_sampler_gathered():
    y = torch.randn(2, 6, 3)
    negs, idx = fairseq.sample_negatives(
        y,
        6,
        2,
        num_negatives=4,
        cross_sample_negatives=1,
        generator=torch.Generator().manual_seed(8),
    )
    want = fairseq.sample_negative_indices(
        2, 6, 4, 1, padding_count=2, generator=torch.Generator().manual_seed(8)
    )
    assert negs.shape == (5, 2, 6, 3) and torch.equal(idx, want.view(2, -1))
    assert torch.equal(negs, _values(y, want))
    with pytest.raises(UserInputError, match="`num` must be y's T=6"):
        fairseq.sample_negatives(y, 5)
