"""``cpc_fast.integrations.cpc_audio``: CPC_audio's ``CPCUnsupersivedCriterion`` as a module.

``_cpc_audio_forward`` re-implements the criterion's published formula in float64 (CPC_audio
is not installable here) from a float64 copy of the module's own predictors: W = S - K
windows, step k predicts z[:, t + k] with predictor k, scores = mean over D of prediction *
candidate, candidates [positive; the N negatives shared by the steps], cross-entropy with
label 0 (mean over B·W), accuracy = argmax == 0 (first maximum: a tie counts), both (1, K).
The sampler is checked for CPC_audio's support (every frame but t, of any sequence),
uniformity and its very draws (``_sample_clean``: ``sampleClean``'s draw, from its code).

Every ``rnnMode`` of CPC_audio's ``cpc/train.py``: the predictors other than linear, RNN and
LSTM are CPC_audio's own classes, which a stand-in ``cpc`` package written here provides
(``STANDIN``: CPC_audio's class names, constructor signatures and parameter names; its layers
compute something simple, which the formula reads from the module like any predictor).
"""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path

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


def _cpc_audio_forward(criterion, c, z, neg, label=None, masks=None):
    """float64: c (B, S, AR), z (B, S, D), neg (B, 1, W, N) rows of B·S, dropout's scaled
    masks (B, W, D) per step or None -> (1, K) losses and accuracies, with the criterion's
    weights."""
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
    predictors = copy.deepcopy(criterion.wPrediction.predictors).double()
    losses, accuracies = [], []
    for k in range(1, K + 1):
        prediction = predictors[k - 1](c)  # (B, W, D); (output, state) from an RNN or LSTM
        prediction = prediction[0] if isinstance(prediction, tuple) else prediction
        if masks is not None:
            prediction = prediction * masks[k - 1]
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
        ({"rnnMode": "lstm"}, "`rnnMode` must be one of CPC_audio's 'transformer', 'RNN'"),
        ({"rnnMode": True}, "`rnnMode`"),
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


STANDIN = {
    "cpc/__init__.py": "",
    "cpc/criterion/__init__.py": "",
    "cpc/criterion/criterion.py": '''
"""Stand-in for CPC_audio's cpc/criterion/criterion.py: FFNetwork and ShiftedConv, their
constructor signatures and parameter names (each layer under ``.module``, as CPC_audio's
equalized layers hold theirs)."""
import torch
from torch import nn

BUILT = []  # (class, constructor arguments) of every predictor built


class _Equalized(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class FFNetwork(nn.Module):
    def __init__(self, din, dout, dff, dropout):
        super().__init__()
        BUILT.append(("FFNetwork", din, dout, dff, dropout))
        self.lin1 = _Equalized(nn.Linear(din, dff))
        self.lin2 = _Equalized(nn.Linear(dff, dout))

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(x)))


class ShiftedConv(nn.Module):
    def __init__(self, dimOutputAR, dimOutputEncoder, kernelSize):
        super().__init__()
        BUILT.append(("ShiftedConv", dimOutputAR, dimOutputEncoder, kernelSize))
        self.module = _Equalized(nn.Conv1d(dimOutputAR, dimOutputEncoder, kernelSize))
        self.kernelSize = kernelSize

    def forward(self, x):  # (B, S, C) -> (B, S, D), each output from its frame and earlier
        x = nn.functional.pad(x.transpose(1, 2), (self.kernelSize - 1, 0))
        return self.module(x).transpose(1, 2)
''',
    "cpc/transformers.py": '''
"""Stand-in for CPC_audio's cpc/transformers.py: buildTransformerAR's signature and the
parameter (and buffer) names of the layers it builds."""
import torch
from torch import nn

BUILT = []


class _Attention(nn.Module):
    def __init__(self, sizeSeq, dk):
        super().__init__()
        self.Krelpos = nn.Parameter(torch.randn(dk, sizeSeq) / dk)
        self.register_buffer("z", torch.zeros(1, sizeSeq, 1))
        mask = torch.full((sizeSeq, sizeSeq), float("-inf")).triu(1)
        self.register_buffer("mask", mask.unsqueeze(0))  # no frame attends to a later one

    def forward(self, q, k, v):
        a = torch.softmax(q @ k.transpose(1, 2) / q.shape[2] ** 0.5 + self.mask, 2)
        return a @ v


class _MultiHead(nn.Module):
    def __init__(self, sizeSeq, dmodel):
        super().__init__()
        self.Wo, self.Wk, self.Wq, self.Wv = (
            nn.Linear(dmodel, dmodel, bias=False) for _ in range(4)
        )
        self.Att = _Attention(sizeSeq, dmodel)

    def forward(self, x):
        return self.Wo(self.Att(self.Wq(x), self.Wk(x), self.Wv(x)))


class _FFNetwork(nn.Module):
    def __init__(self, dmodel, dff):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dmodel, dff), nn.Linear(dff, dmodel)

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(x)))


class TransformerLayer(nn.Module):
    def __init__(self, sizeSeq=32, dmodel=512, dff=2048, dropout=0.1, nheads=8, abspos=False):
        super().__init__()
        self.multihead = _MultiHead(sizeSeq, dmodel)
        self.ln_multihead = nn.LayerNorm(dmodel)
        self.ffnetwork = _FFNetwork(dmodel, 16)  # a small dff: the names are what matters
        self.ln_ffnetwork = nn.LayerNorm(dmodel)

    def forward(self, x):
        y = self.ln_multihead(x + self.multihead(x))
        return self.ln_ffnetwork(y + self.ffnetwork(y))


def buildTransformerAR(dimEncoded, nLayers, sizeSeq, abspos):
    BUILT.append(("buildTransformerAR", dimEncoded, nLayers, sizeSeq, abspos))
    layers = [TransformerLayer(sizeSeq=sizeSeq, dmodel=dimEncoded) for _ in range(nLayers)]
    return nn.Sequential(*layers)
''',
}
# Each predictor's state-dict names in CPC_audio's criterion (facebookresearch/CPC_audio at
# b98a1bd, listed from its code), under wPrediction.predictors.<k>.
RNN_NAMES = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
CONV_NAMES = ["module.module.weight", "module.module.bias"]
CPC_AUDIO_NAMES = {
    "linear": ["weight"],
    "RNN": RNN_NAMES,
    "LSTM": RNN_NAMES,
    "ffd": ["lin1.module.weight", "lin1.module.bias", "lin2.module.weight", "lin2.module.bias"],
    "conv4": CONV_NAMES,
    "conv8": CONV_NAMES,
    "conv12": CONV_NAMES,
    "transformer": [
        f"0.{name}"
        for name in (
            *(f"multihead.W{w}.weight" for w in "okqv"),
            "multihead.Att.Krelpos",
            "multihead.Att.z",
            "multihead.Att.mask",
            "ln_multihead.weight",
            "ln_multihead.bias",
            *(f"ffnetwork.lin{i}.{p}" for i in (1, 2) for p in ("weight", "bias")),
            "ln_ffnetwork.weight",
            "ln_ffnetwork.bias",
        )
    ],
}
MODES = list(CPC_AUDIO_NAMES)
S_MODES = 14  # frames per sequence in the mode tests; the transformer's sizeInputSeq


def _cpc_modules() -> list[str]:
    return [name for name in sys.modules if name == "cpc" or name.startswith("cpc.")]


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """The stand-in ``cpc`` package on the path; its two modules of layers."""
    for name, text in STANDIN.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for name in _cpc_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    import cpc.criterion.criterion as criterion  # the stand-in
    import cpc.transformers as transformers

    yield criterion, transformers
    for name in _cpc_modules():
        del sys.modules[name]


def _built(standin) -> list[tuple]:
    return standin[0].BUILT + standin[1].BUILT


@pytest.mark.parametrize("mode", MODES)
def test_every_rnn_mode_builds_cpc_audio_s_predictors_under_its_names(standin, mode):
    K, AR, D = 2, 8, 8
    criterion = cpc_audio.CPCUnsupersivedCriterion(K, AR, D, 5, rnnMode=mode, sizeInputSeq=10)
    want = [
        f"wPrediction.predictors.{k}.{name}" for k in range(K) for name in CPC_AUDIO_NAMES[mode]
    ]
    assert list(criterion.state_dict()) == want
    predictor = criterion.wPrediction.predictors[1]
    if mode.startswith("conv"):
        expected = [("ShiftedConv", AR, D, int(mode.removeprefix("conv")))] * K
    elif mode == "ffd":
        expected = [("FFNetwork", AR, D, D, 0)] * K
    elif mode == "transformer":
        expected = [("buildTransformerAR", D, 1, 10 - K, False)] * K  # over W = S - K frames
    else:
        expected = []  # linear, RNN, LSTM: torch's layers
    assert _built(standin) == expected
    if mode in ("RNN", "LSTM"):  # torch's layers, with CPC_audio's arguments
        assert type(predictor) is getattr(torch.nn, mode)
        assert (predictor.input_size, predictor.hidden_size) == (AR, D)
        assert predictor.batch_first == (mode == "LSTM")  # CPC_audio's RNN: not batch_first
    # A CPC_audio checkpoint of the same configuration loads strictly.
    again = cpc_audio.CPCUnsupersivedCriterion(K, AR, D, 5, rnnMode=mode, sizeInputSeq=10)
    again.load_state_dict(criterion.state_dict(), strict=True)


@pytest.mark.parametrize("mode", MODES)
def test_every_rnn_mode_s_loss_and_gradients_are_the_formula_s(standin, mode):
    torch.manual_seed(0)
    K, N = 4, 9
    criterion = cpc_audio.CPCUnsupersivedCriterion(
        K, 8, 8, N, rnnMode=mode, dropout=True, sizeInputSeq=S_MODES
    ).eval()  # CPC_audio's dropout, off in eval mode
    c, z = _inputs(S=S_MODES, AR=8, D=8, seed=1)
    B, S, _ = z.shape
    c.requires_grad_(), z.requires_grad_()
    losses, acc = criterion(c, z, None, generator=torch.Generator().manual_seed(2))
    neg = cpc_audio.sample_negative_indices(
        B, S, S - K, N, generator=torch.Generator().manual_seed(2)
    )
    c64, z64 = c.detach().double().requires_grad_(), z.detach().double().requires_grad_()
    want_losses, want_acc = _cpc_audio_forward(criterion, c64, z64, neg)
    torch.testing.assert_close(losses.double(), want_losses, rtol=1e-5, atol=1e-6)
    rows = B * (S - K)
    assert torch.equal((acc.double() * rows).round(), (want_acc * rows).round())
    grads = torch.autograd.grad(losses.sum(), [c, z])  # CPC_audio trains on the sum
    want = torch.autograd.grad(want_losses.sum(), [c64, z64])
    for got, expected in zip(grads, want, strict=True):
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_modes_of_cpc_audio_s_own_classes_need_it_and_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cpc", None)  # `import cpc` fails: CPC_audio is absent
    for mode in ("transformer", "ffd", "conv4", "conv8", "conv12"):
        with pytest.raises(UserInputError, match=f"`rnnMode` '{mode}' builds its predictors"):
            cpc_audio.CPCUnsupersivedCriterion(2, 8, 8, 5, rnnMode=mode)
    for mode in ("linear", None, False, "RNN", "LSTM"):  # torch's own layers
        cpc_audio.CPCUnsupersivedCriterion(2, 8, 8, 5, rnnMode=mode)


def test_transformer_mode_s_shapes_are_checked_up_front(standin):
    with pytest.raises(UserInputError, match="`dimOutputEncoder`"):
        cpc_audio.CPCUnsupersivedCriterion(2, 8, 16, 5, rnnMode="transformer")
    with pytest.raises(UserInputError, match="`sizeInputSeq` - `nPredicts`"):
        cpc_audio.CPCUnsupersivedCriterion(12, 8, 8, 5, rnnMode="transformer", sizeInputSeq=12)
    criterion = cpc_audio.CPCUnsupersivedCriterion(2, 8, 8, 5, rnnMode="transformer")
    c, z = _inputs(S=20, AR=8, D=8)
    with pytest.raises(UserInputError, match="set `sizeInputSeq` to 20"):
        criterion(c, z, None)


def _sample_clean(B, S, W, N, generator=None):
    """CPC_audio's sampleClean draw, from its code: (B·N·W,) sequences, then (B·N·W,) shifts
    in [1, S) added to t (laid out (B, N, W)) mod S -> (B, N, W) rows of the batch."""
    batch = torch.randint(0, B, (N * W * B,), generator=generator)
    frame = torch.randint(1, S, (N * W * B,), generator=generator)
    frame = (frame + torch.arange(W).repeat(B * N)) % S
    return (frame + batch * S).view(B, N, W)


def test_the_sampler_draws_cpc_audio_s_very_negatives_for_a_seed():
    B, S, W, N = 3, 11, 7, 5
    ours = cpc_audio.sample_negative_indices(B, S, W, N, generator=torch.Generator().manual_seed(4))
    theirs = _sample_clean(B, S, W, N, torch.Generator().manual_seed(4))
    assert torch.equal(ours, theirs.transpose(1, 2).unsqueeze(1))


def test_a_seed_gives_cpc_audio_s_negatives_and_dropout_masks():
    """CPC_audio draws its negatives first, then applies dropout to each step's prediction in
    turn: under torch.manual_seed the swap makes the same draws (training mode)."""
    K, N = 3, 6
    criterion = cpc_audio.CPCUnsupersivedCriterion(K, 10, 16, N, dropout=True)
    c, z = _inputs(seed=5)
    B, S, D = z.shape
    W = S - K
    torch.manual_seed(6)
    losses, acc = criterion(c, z, None)
    torch.manual_seed(6)
    neg = _sample_clean(B, S, W, N).transpose(1, 2).unsqueeze(1)
    masks = [torch.nn.functional.dropout(torch.ones(B, W, D), 0.5).double() for _ in range(K)]
    want_losses, want_acc = _cpc_audio_forward(criterion, c, z, neg, masks=masks)
    torch.testing.assert_close(losses.double(), want_losses, rtol=1e-5, atol=1e-6)
    assert torch.equal((acc.double() * B * W).round(), (want_acc * B * W).round())


def test_the_documentation_s_examples_run(standin):
    """docs/integrations/cpc_audio.md's Python blocks, as written (CPC_audio's classes from
    the stand-in)."""
    page = Path(__file__).resolve().parents[1] / "docs" / "integrations" / "cpc_audio.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    # the swapped criterion's: LSTM predictors, then the transformer (CPC_audio's classes);
    # the page's `cpc_info_nce` block runs in test_docs_examples.py
    blocks = [b for b in blocks if "CPCUnsupersivedCriterion(" in b]
    assert len(blocks) == 2
    scope: dict = {}
    for block in blocks:  # in order, in one namespace, as a reader runs them
        scope.pop("all_losses", None)
        exec(compile(block, str(page), "exec"), scope)
        assert torch.isfinite(scope["all_losses"]).all()
        assert scope["c_feature"].grad.abs().sum() > 0
    assert type(scope["criterion"].wPrediction.predictors[0]).__name__ == "Sequential"
