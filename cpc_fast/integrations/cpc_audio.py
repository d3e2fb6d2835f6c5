"""CPC_audio's ``CPCUnsupersivedCriterion`` over :func:`cpc_fast.cpc_info_nce`, and its sampler.

CPC_audio (facebookresearch/CPC_audio, ``cpc/criterion/criterion.py``) predicts, for each of
its K = ``nPredicts`` steps, the encoded frame z[:, t + k] of the first W = S - K context
frames with a predictor (``rnnMode``: bias-free linear by default in the class, a transformer
by default in its ``cpc/train.py``); scores each prediction against the positive and
``negativeSamplingExt`` negatives by the mean over D of their product (dot / D); the
negatives are drawn once per call and shared by the K steps, each frame (t + r) mod S,
r in [1, S), of a random sequence of the batch; and returns per-step losses (cross-entropy
with label 0, mean over B·W rows) and accuracies (argmax == 0: a tie with the positive
counts), each (1, K).

:class:`CPCUnsupervisedCriterion` takes the same constructor arguments and forward inputs
and returns the same (1, K) pairs; the loss runs through :func:`cpc_fast.cpc_info_nce`
(temperature D, ``negatives_from="batch"``, shared by the steps, ``correct_on_tie=True``;
fused Triton kernels on CUDA, on a CPU the reference's shared form, which gathers each
frame's negatives once for the K steps). ``CPCUnsupersivedCriterion`` is the same class
under CPC_audio's spelling, for the one-line swap::

    from cpc_fast.integrations.cpc_audio import CPCUnsupersivedCriterion

Every ``--rnnMode`` of CPC_audio's ``train.py``: ``linear`` (and None/False), ``RNN`` and
``LSTM`` are built here (torch's layers, with CPC_audio's arguments: its RNN is not
``batch_first``); ``ffd``, ``conv4/8/12`` and ``transformer`` from CPC_audio's own classes
(``cpc.criterion.criterion``, ``cpc.transformers``), which must be importable. The
predictors are built in CPC_audio's order under its parameter names
(``wPrediction.predictors.<k>.*``, ``speakerEmb.weight``), so a CPC_audio checkpoint loads
with ``strict=True`` and, for a seed, the initial weights are CPC_audio's; the negatives are
drawn before the predictions and dropout, in CPC_audio's layout, so ``torch.manual_seed``
gives CPC_audio's very draws too.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor, nn

from cpc_fast.errors import UserInputError
from cpc_fast.losses.info_nce import cpc_info_nce

RESIDUAL_STD = 0.01  # CPC_audio's scale for the predictor rows beyond dimOutputAR
# ``--rnnMode`` of CPC_audio's ``cpc/train.py``; the others build CPC_audio's own layers.
LINEAR_MODES = (None, False, "linear")
CPC_AUDIO_MODES = ("transformer", "RNN", "LSTM", "ffd", "conv4", "conv8", "conv12")


def sample_negative_indices(
    B: int,
    S: int,
    W: int,
    num_negatives: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """CPC_audio's ``sampleClean`` draws, as ``cpc_info_nce``'s ``neg_index``: (B, 1, W, N)
    int64 rows b'·S + f of the batch's B·S frames, on ``device``.

    Window frame t of sequence b draws N times a sequence b' uniformly among the B and the
    frame f = (t + r) mod S with r uniform in [1, S): every frame but t, of any sequence
    (its own included, so the positive t + k can be drawn: a tie, counted correct by
    CPC_audio's argmax). The two draws are made as CPC_audio makes them (sequences, then
    shifts, each (B, N, W) in memory order), so the same generator state gives CPC_audio's
    very negatives. What CPC_audio's sampler does not offer is a generator, and
    ``cpc_info_nce``'s own batch draws are uniform over all B·S frames instead (t included).
    """
    for name, value in (("B", B), ("num_negatives", num_negatives), ("W", W)):
        if value < 1:
            raise UserInputError(f"`{name}` must be >= 1, got {value}")
    if not W < S or S < 2:
        raise UserInputError(f"CPC_audio's sampler needs 2 <= S and W < S, got S={S}, W={W}")
    shape = (B, num_negatives, W)
    sequence = torch.randint(0, B, shape, device=device, generator=generator)
    shift = torch.randint(1, S, shape, device=device, generator=generator)
    t = torch.arange(W, device=sequence.device).view(1, 1, W)
    rows = sequence * S + (t + shift) % S  # (B, N, W)
    return rows.transpose(1, 2).unsqueeze(1).contiguous()


def _linear(dimOutputAR: int, dimOutputEncoder: int) -> nn.Linear:
    """CPC_audio's linear predictor and its initialisation: when D > AR, a random square
    block over small residual rows."""
    linear = nn.Linear(dimOutputAR, dimOutputEncoder, bias=False)
    if dimOutputEncoder > dimOutputAR:
        residual = dimOutputEncoder - dimOutputAR
        with torch.no_grad():
            linear.weight.copy_(
                torch.cat(
                    [
                        torch.randn(dimOutputAR, dimOutputAR),
                        RESIDUAL_STD * torch.randn(residual, dimOutputAR),
                    ]
                )
            )
    return linear


def _cpc_audio_module(name: str, rnnMode: str) -> ModuleType:
    """CPC_audio's module ``name`` (its ``cpc`` package), or an error naming the mode."""
    try:
        # Optional: CPC_audio is no package on any registry; it is importable wherever its
        # training script runs (its checkout, or ``pip install -e`` of it).
        return importlib.import_module(name)
    except ImportError as exc:
        raise UserInputError(
            f"`rnnMode` {rnnMode!r} builds its predictors from CPC_audio's own classes "
            f"({name}), which cannot be imported here ({exc}): run from a checkout of "
            "facebookresearch/CPC_audio or `pip install -e` it; rnnMode='linear' needs "
            "nothing"
        ) from exc


def _predictor(
    rnnMode: str | bool | None, dimOutputAR: int, dimOutputEncoder: int, sizeSeq: int
) -> nn.Module:
    """One step's predictor, as CPC_audio's ``PredictionNetwork`` builds it for ``rnnMode``:
    the same class and arguments, so the same parameters (and, for a seed, the same values)."""
    if rnnMode in LINEAR_MODES:
        return _linear(dimOutputAR, dimOutputEncoder)
    if rnnMode == "RNN":  # no batch_first: CPC_audio's recurrence runs across the batch
        return nn.RNN(dimOutputAR, dimOutputEncoder)
    if rnnMode == "LSTM":
        return nn.LSTM(dimOutputAR, dimOutputEncoder, batch_first=True)
    if rnnMode == "transformer":
        # CPC_audio imports it as ``transformers`` (found only when its cpc/ folder is the
        # script's); under its package name it is found wherever CPC_audio is.
        layers = _cpc_audio_module("cpc.transformers", rnnMode)
        return layers.buildTransformerAR(dimOutputEncoder, 1, sizeSeq, False)
    layers = _cpc_audio_module("cpc.criterion.criterion", rnnMode)
    if rnnMode == "ffd":
        return layers.FFNetwork(dimOutputAR, dimOutputEncoder, dimOutputEncoder, 0)
    return layers.ShiftedConv(dimOutputAR, dimOutputEncoder, int(rnnMode.removeprefix("conv")))


class _PredictionNetwork(nn.Module):
    """CPC_audio's ``PredictionNetwork`` without its scoring: the K predictors (built in
    CPC_audio's order, under its parameter names) and its dropout on their outputs."""

    def __init__(
        self,
        nPredicts: int,
        dimOutputAR: int,
        dimOutputEncoder: int,
        rnnMode: str | bool | None,
        dropout: bool,
        sizeSeq: int,
    ) -> None:
        super().__init__()
        self.predictors = nn.ModuleList(
            _predictor(rnnMode, dimOutputAR, dimOutputEncoder, sizeSeq) for _ in range(nPredicts)
        )
        self.dropout = nn.Dropout(p=0.5) if dropout else None
        self.all_linear = rnnMode in LINEAR_MODES

    def forward(self, c: Tensor) -> Tensor:
        """c (B, W, AR) -> predictions (B, K, W, D), a view of a (B, W, K, D) buffer (the
        layout the loss reads without a copy)."""
        B, W, _ = c.shape
        K = len(self.predictors)
        dropping = self.dropout is not None and self.training
        if self.all_linear and not dropping:
            # The K linear predictors as one GEMM: (B·W, AR) x (AR, K·D).
            weight = torch.cat([p.weight for p in self.predictors])  # (K·D, AR)
            return (c @ weight.t()).view(B, W, K, -1).permute(0, 2, 1, 3)
        out = []
        for predictor in self.predictors:  # in CPC_audio's order: its dropout draws match
            prediction = predictor(c)
            if isinstance(prediction, tuple):  # RNN, LSTM: (output, state)
                prediction = prediction[0]
            out.append(self.dropout(prediction) if dropping else prediction)
        return torch.stack(out, 2).permute(0, 2, 1, 3)


class CPCUnsupervisedCriterion(nn.Module):
    """CPC_audio's ``CPCUnsupersivedCriterion(nPredicts, dimOutputAR, dimOutputEncoder,
    negativeSamplingExt, mode=None, rnnMode=False, dropout=False, speakerEmbedding=0,
    nSpeakers=0, sizeInputSeq=128)``; forward(cFeature, encodedData, label) -> (losses
    (1, K), accuracies (1, K)).

    ``backend`` (keyword only, not CPC_audio's) as for :func:`cpc_fast.info_nce`;
    ``forward(..., generator=)`` makes the negative draws reproducible.
    """

    def __init__(
        self,
        nPredicts: int,
        dimOutputAR: int,
        dimOutputEncoder: int,
        negativeSamplingExt: int,
        mode: str | None = None,
        rnnMode: str | bool | None = False,
        dropout: bool = False,
        speakerEmbedding: int = 0,
        nSpeakers: int = 0,
        sizeInputSeq: int = 128,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if mode not in (None, "reverse"):
            raise UserInputError(f"`mode` must be None or 'reverse', got {mode!r}")
        if rnnMode not in LINEAR_MODES + CPC_AUDIO_MODES:
            raise UserInputError(
                f"`rnnMode` must be one of CPC_audio's {', '.join(map(repr, CPC_AUDIO_MODES))}, "
                f"'linear' (or None/False: linear), got {rnnMode!r}"
            )
        for name, value in (("nPredicts", nPredicts), ("negativeSamplingExt", negativeSamplingExt)):
            if value < 1:
                raise UserInputError(f"`{name}` must be >= 1, got {value}")
        dimInput = dimOutputAR + speakerEmbedding
        if rnnMode == "transformer":
            _check_transformer(nPredicts, dimInput, dimOutputEncoder, sizeInputSeq)
        self.speakerEmb = nn.Embedding(nSpeakers, speakerEmbedding) if speakerEmbedding else None
        self.wPrediction = _PredictionNetwork(
            nPredicts, dimInput, dimOutputEncoder, rnnMode, dropout, sizeInputSeq - nPredicts
        )
        self.nPredicts = nPredicts
        self.negativeSamplingExt = negativeSamplingExt
        self.mode = mode
        self.rnnMode = rnnMode
        self.sizeInputSeq = sizeInputSeq  # the transformer's frames, W = sizeInputSeq - K
        self.backend = backend

    def warmUp(self) -> bool:
        return False  # CPC_audio's criteria have no warm-up

    def update(self) -> None:
        return None

    def forward(
        self,
        cFeature: Tensor,
        encodedData: Tensor,
        label: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """cFeature (B, S, AR) context, encodedData (B, S, D) encoded frames, label (B,)
        speaker ids (read with ``speakerEmbedding`` only) -> losses (1, K), accuracies
        (1, K) over the B·W windows, W = S - nPredicts."""
        if cFeature.dim() != 3 or encodedData.dim() != 3:
            raise UserInputError(
                "`cFeature` and `encodedData` must be (B, S, C) tensors, got shapes "
                f"{tuple(cFeature.shape)} and {tuple(encodedData.shape)}"
            )
        B, S, _ = cFeature.shape
        if tuple(encodedData.shape[:2]) != (B, S):
            raise UserInputError(
                f"`encodedData` must have B={B} sequences of S={S} frames like `cFeature`, "
                f"got {tuple(encodedData.shape)}"
            )
        K, D = self.nPredicts, encodedData.shape[2]
        W = S - K
        if W < 1:
            raise UserInputError(f"sequences of S={S} frames leave no window for {K} steps")
        if self.mode == "reverse":
            cFeature, encodedData = torch.flip(cFeature, [1]), torch.flip(encodedData, [1])
        if self.rnnMode == "transformer" and W != self.sizeInputSeq - K:
            raise UserInputError(
                f"rnnMode='transformer' attends over `sizeInputSeq` - {K} = "
                f"{self.sizeInputSeq - K} frames, got sequences of S={S}: set `sizeInputSeq` "
                f"to {S}"
            )
        # The negatives first, as CPC_audio draws them: a seed gives its draws and dropout.
        neg = sample_negative_indices(
            B, S, W, self.negativeSamplingExt, device=encodedData.device, generator=generator
        )
        c = cFeature[:, :W]
        if self.speakerEmb is not None:
            if label is None:
                raise UserInputError("`label` (B,) speaker ids are needed with speakerEmbedding")
            c = torch.cat([c, self.speakerEmb(label.view(B, 1).expand(B, W))], 2)
        predictions = self.wPrediction(c)  # (B, K, W, D)
        out = cpc_info_nce(
            predictions,
            encodedData,
            neg_index=neg,
            temperature=D,  # CPC_audio's mean over D is the dot product / D
            negatives_from="batch",
            correct_on_tie=True,
            backend=self.backend,
        )
        return out.loss_per_step.view(1, K), out.accuracy_per_step.view(1, K)


def _check_transformer(
    nPredicts: int, dimInput: int, dimOutputEncoder: int, sizeInputSeq: int
) -> None:
    """CPC_audio's transformer predictor reads dimOutputEncoder features (its model's width)
    over exactly sizeInputSeq - nPredicts frames (its attention mask's size)."""
    if dimInput != dimOutputEncoder:
        raise UserInputError(
            f"rnnMode='transformer' predicts with a transformer of width `dimOutputEncoder` "
            f"({dimOutputEncoder}) over its input of `dimOutputAR` + `speakerEmbedding` "
            f"({dimInput}) features: make them equal"
        )
    if sizeInputSeq - nPredicts < 1:
        raise UserInputError(
            f"rnnMode='transformer' attends over `sizeInputSeq` - `nPredicts` frames: "
            f"{sizeInputSeq} - {nPredicts} leaves none"
        )


CPCUnsupersivedCriterion = CPCUnsupervisedCriterion
"""CPC_audio's spelling of :class:`CPCUnsupervisedCriterion`, so that swapping the import is
the whole change."""
