"""``cpc_fast.integrations.cpc_audio``: CPC_audio's ``CPCUnsupersivedCriterion`` as a module.

``_cpc_audio_forward`` re-implements the criterion's published formula in float64 (CPC_audio
is not installable here) from the module's own predictor weights: W = S - K windows, step k
predicts z[:, t + k] with predictor k, scores = mean over D of prediction * candidate,
candidates [positive; the N negatives shared by the steps], cross-entropy with label 0 (mean
over B·W), accuracy = argmax == 0 (first maximum: a tie counts), both (1, K). The sampler is
checked for CPC_audio's support (every frame but t, of any sequence) and uniformity.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from sampler_checks import is_uniform

from cpc_fast.errors import UserInputError
from cpc_fast.integrations import cpc_audio
from cpc_fast.losses import sample_negatives

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]


def _cpc_audio_forward(criterion, c, z, neg, label=None):
    """float64: c (B, S, AR), z (B, S, D), neg (B, 1, W, N) rows of B·S -> (1, K) losses and
    accuracies, with the criterion's weights."""
    K = criterion.nPredicts
    B, S, D = z.shape
    W = S - K
    if criterion.mode == "reverse":
        c, z = torch.flip(c, [1]), torch.flip(z, [1])
    c, z = c.double()[:, :W], z.double()
    if criterion.speakerEmb is not None:
        c = torch.cat(
            [c, criterion.speakerEmb.weight.double()[label].unsqueeze(1).expand(-1, W, -1)], 2
        )
    negatives = z.reshape(B * S, D)[neg[:, 0]].permute(0, 2, 1, 3)  # (B, N, W, D)
    losses, accuracies = [], []
    for k in range(1, K + 1):
        prediction = c @ criterion.wPrediction.predictors[k - 1].weight.double().t()  # (B, W, D)
        candidates = torch.cat([z[:, k : k + W].unsqueeze(1), negatives], 1)  # (B, N + 1, W, D)
        scores = (prediction.unsqueeze(1) * candidates).mean(3)  # (B, N + 1, W)
        scores = scores.permute(0, 2, 1).reshape(B * W, -1)
        label0 = torch.zeros(B * W, dtype=torch.long)
        losses.append(F.cross_entropy(scores, label0))
        accuracies.append((scores.max(1).indices == 0).double().sum() / (B * W))
    return torch.stack(losses).view(1, K), torch.stack(accuracies).view(1, K)


def _inputs(B=3, S=14, AR=10, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, AR, generator=g), torch.randn(B, S, D, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "options",
    [{}, {"mode": "reverse"}, {"speakerEmbedding": 3, "nSpeakers": 5}],
    ids=["default", "reverse", "speakers"],
)
def test_losses_and_accuracies_match_cpc_audio_s_formula(backend, options):
    torch.manual_seed(0)
    K, N = 4, 9
    criterion = cpc_audio.CPCUnsupersivedCriterion(K, 10, 16, N, backend=backend, **options)
    criterion = criterion.to(DEVICE)
    c, z = _inputs()
    B, S, _ = z.shape
    label = torch.tensor([0, 4, 2])
    z[0, 5] = z[1, 7]  # equal frames in two sequences: a drawn duplicate ties by value only
    losses, acc = criterion(
        c.to(DEVICE),
        z.to(DEVICE),
        label.to(DEVICE),
        generator=torch.Generator(DEVICE).manual_seed(1),
    )
    neg = cpc_audio.sample_negative_indices(
        B, S, S - K, N, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1)
    ).cpu()
    want_losses, want_acc = _cpc_audio_forward(criterion.cpu(), c, z, neg, label)
    assert losses.shape == acc.shape == (1, K)
    torch.testing.assert_close(losses.cpu().double(), want_losses, rtol=1e-5, atol=1e-6)
    rows = B * (S - K)
    assert torch.equal((acc.cpu().double() * rows).round(), want_acc * rows)


def test_a_forced_tie_counts_as_correct_like_cpc_audio_s_argmax():
    K, N = 2, 3
    criterion = cpc_audio.CPCUnsupervisedCriterion(K, 8, 8, N)
    c, z = _inputs(B=1, S=6, AR=8, D=8, seed=3)
    with torch.no_grad():  # predictor 0 predicts zero: every score of step 1 is 0, a tie
        criterion.wPrediction.predictors[0].weight.zero_()
    neg = cpc_audio.sample_negative_indices(1, 6, 4, N, generator=torch.Generator().manual_seed(0))
    _, acc = _cpc_audio_forward(criterion, c, z, neg)
    _, ours = criterion(c, z, None, generator=torch.Generator().manual_seed(0))
    assert ours[0, 0] == acc[0, 0] == 1.0  # CPC_audio's argmax calls every tie correct
    assert ours[0, 1] == acc[0, 1] < 1  # step 2 is scored as usual


def test_gradients_reach_the_predictors_and_the_inputs():
    criterion = cpc_audio.CPCUnsupervisedCriterion(3, 10, 16, 5)
    c, z = _inputs(seed=4)
    c.requires_grad_(), z.requires_grad_()
    losses, _ = criterion(c, z, None)
    losses.sum().backward()  # CPC_audio trains on the sum over steps
    weight = criterion.wPrediction.predictors[2].weight
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (c, z, weight))


def test_state_dict_has_cpc_audio_s_names_and_initialisation():
    torch.manual_seed(5)
    criterion = cpc_audio.CPCUnsupervisedCriterion(3, 4, 6, 5, speakerEmbedding=2, nSpeakers=7)
    names = set(criterion.state_dict())
    want = {f"wPrediction.predictors.{k}.weight" for k in range(3)} | {"speakerEmb.weight"}
    assert names == want
    weight = criterion.wPrediction.predictors[0].weight  # (6, 4 + 2): residual rows small
    assert weight.shape == (6, 6)
    criterion = cpc_audio.CPCUnsupervisedCriterion(2, 4, 40, 5)
    rows = criterion.wPrediction.predictors[1].weight
    assert rows[4:].std() < 0.05 < rows[:4].std()  # CPC_audio's RESIDUAL_STD = 0.01 rows


def test_sampler_support_and_uniformity():
    B, S, W, N = 3, 7, 4, 6000
    neg = cpc_audio.sample_negative_indices(B, S, W, N, generator=torch.Generator().manual_seed(6))
    assert neg.shape == (B, 1, W, N)
    every = torch.arange(B * S)
    for b, t in [(0, 0), (1, 3), (2, 2)]:
        support = every[every % S != t]  # any sequence, every frame but t
        assert is_uniform(neg[b, 0, t], support, B * S), (b, t)
    # cpc_info_nce's own batch draws (uniform over all B·S frames) fail the same check.
    other = sample_negatives(
        B, 1, S, N, rows=W, across_batch=True, generator=torch.Generator().manual_seed(6)
    )
    assert not is_uniform(other[0, 0, 0], every[every % S != 0], B * S)


def test_sampler_is_seeded_and_on_the_device():
    g = [torch.Generator(DEVICE).manual_seed(2) for _ in range(2)]
    a, b = (cpc_audio.sample_negative_indices(2, 5, 3, 4, device=DEVICE, generator=x) for x in g)
    assert a.device.type == DEVICE and torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "forward"}, "`mode`"),
        ({"rnnMode": "LSTM"}, "`rnnMode`"),
        ({"nPredicts": 0}, "`nPredicts`"),
    ],
)
def test_bad_constructor_arguments_name_them(kwargs, match):
    args = {"nPredicts": 2, "dimOutputAR": 4, "dimOutputEncoder": 4, "negativeSamplingExt": 3}
    with pytest.raises(UserInputError, match=match):
        cpc_audio.CPCUnsupervisedCriterion(**{**args, **kwargs})


def test_bad_forward_inputs_name_them():
    criterion = cpc_audio.CPCUnsupervisedCriterion(3, 10, 16, 5)
    c, z = _inputs()
    with pytest.raises(UserInputError, match="`encodedData` must have"):
        criterion(c, z[:, :-1], None)
    with pytest.raises(UserInputError, match="no window"):
        criterion(c[:, :3], z[:, :3], None)
    speakers = cpc_audio.CPCUnsupervisedCriterion(3, 10, 16, 5, speakerEmbedding=2, nSpeakers=3)
    with pytest.raises(UserInputError, match="`label`"):
        speakers(c, z, None)


def test_dropout_acts_in_training_only_like_cpc_audio_s():
    torch.manual_seed(7)
    plain = cpc_audio.CPCUnsupervisedCriterion(2, 10, 16, 4)
    dropped = cpc_audio.CPCUnsupervisedCriterion(2, 10, 16, 4, dropout=True)
    dropped.load_state_dict(plain.state_dict())
    c, z = _inputs(seed=8)

    def run(criterion):
        return criterion(c, z, None, generator=torch.Generator().manual_seed(9))[0]

    assert torch.equal(run(dropped.eval()), run(plain))
    assert not torch.equal(run(dropped.train()), run(plain))
