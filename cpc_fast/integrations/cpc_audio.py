"""CPC_audio's ``CPCUnsupersivedCriterion`` over :func:`cpc_fast.cpc_info_nce`, and its sampler.

CPC_audio (facebookresearch/CPC_audio, ``cpc/criterion/criterion.py``) predicts, for each of
its K = ``nPredicts`` steps, the encoded frame z[:, t + k] of the first W = S - K context
frames with a bias-free linear predictor; scores each prediction against the positive and
``negativeSamplingExt`` negatives by the mean over D of their product (dot / D); the
negatives are drawn once per call and shared by the K steps, each frame (t + r) mod S,
r in [1, S), of a random sequence of the batch; and returns per-step losses (cross-entropy
with label 0, mean over B·W rows) and accuracies (argmax == 0: a tie with the positive
counts), each (1, K).

:class:`CPCUnsupervisedCriterion` takes the same constructor arguments and forward inputs
and returns the same (1, K) pairs, its predictors under the same parameter names
(``wPrediction.predictors.<k>.weight``, ``speakerEmb.weight``), so a CPC_audio checkpoint
loads into it; the loss runs through :func:`cpc_fast.cpc_info_nce` (temperature D,
``negatives_from="batch"``, shared by the steps, ``correct_on_tie=True``; fused Triton
kernels on CUDA). ``CPCUnsupersivedCriterion`` is the same class under CPC_audio's spelling,
for the one-line swap::

    from cpc_fast.integrations.cpc_audio import CPCUnsupersivedCriterion

Only the default linear predictors are offered (``rnnMode`` None/False): the other modes
build CPC_audio's own layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cpc_fast.errors import UserInputError
from cpc_fast.losses.info_nce import cpc_info_nce

RESIDUAL_STD = 0.01  # CPC_audio's scale for the predictor rows beyond dimOutputAR


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
    CPC_audio's argmax). CPC_audio's own sampler draws exactly this; what it does not
    offer is a generator, and ``cpc_info_nce``'s own batch draws are uniform over all B·S
    frames instead (t included).
    """
    for name, value in (("B", B), ("num_negatives", num_negatives), ("W", W)):
        if value < 1:
            raise UserInputError(f"`{name}` must be >= 1, got {value}")
    if not W < S or S < 2:
        raise UserInputError(f"CPC_audio's sampler needs 2 <= S and W < S, got S={S}, W={W}")
    shape = (B, 1, W, num_negatives)
    sequence = torch.randint(0, B, shape, device=device, generator=generator)
    shift = torch.randint(1, S, shape, device=device, generator=generator)
    t = torch.arange(W, device=sequence.device).view(1, 1, W, 1)
    return sequence * S + (t + shift) % S


class _PredictionNetwork(nn.Module):
    """CPC_audio's ``PredictionNetwork`` with linear predictors: the same parameters."""

    def __init__(self, nPredicts: int, dimOutputAR: int, dimOutputEncoder: int, dropout: bool):
        super().__init__()
        self.predictors = nn.ModuleList(
            nn.Linear(dimOutputAR, dimOutputEncoder, bias=False) for _ in range(nPredicts)
        )
        self.dropout = nn.Dropout(p=0.5) if dropout else None
        if dimOutputEncoder > dimOutputAR:
            # CPC_audio's initialisation: a random square block, small residual rows below.
            residual = dimOutputEncoder - dimOutputAR
            for linear in self.predictors:
                with torch.no_grad():
                    linear.weight.copy_(
                        torch.cat(
                            [
                                torch.randn(dimOutputAR, dimOutputAR),
                                RESIDUAL_STD * torch.randn(residual, dimOutputAR),
                            ]
                        )
                    )

    def forward(self, c: Tensor) -> Tensor:
        """c (B, W, AR) -> predictions (B, K, W, D)."""
        out = torch.stack([predictor(c) for predictor in self.predictors], 1)
        return out if self.dropout is None else self.dropout(out)


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
        if rnnMode not in (None, False):
            raise UserInputError(
                f"`rnnMode` {rnnMode!r} needs CPC_audio's own predictor layers: only the "
                "default linear predictors (rnnMode=None or False) are offered here"
            )
        for name, value in (("nPredicts", nPredicts), ("negativeSamplingExt", negativeSamplingExt)):
            if value < 1:
                raise UserInputError(f"`{name}` must be >= 1, got {value}")
        self.speakerEmb = nn.Embedding(nSpeakers, speakerEmbedding) if speakerEmbedding else None
        self.wPrediction = _PredictionNetwork(
            nPredicts, dimOutputAR + speakerEmbedding, dimOutputEncoder, dropout
        )
        self.nPredicts = nPredicts
        self.negativeSamplingExt = negativeSamplingExt
        self.mode = mode
        self.sizeInputSeq = sizeInputSeq  # kept for CPC_audio's attribute; unused by linear
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
        c = cFeature[:, :W]
        if self.speakerEmb is not None:
            if label is None:
                raise UserInputError("`label` (B,) speaker ids are needed with speakerEmbedding")
            c = torch.cat([c, self.speakerEmb(label.view(B, 1).expand(B, W))], 2)
        predictions = self.wPrediction(c)  # (B, K, W, D)
        neg = sample_negative_indices(
            B, S, W, self.negativeSamplingExt, device=encodedData.device, generator=generator
        )
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


CPCUnsupersivedCriterion = CPCUnsupervisedCriterion
"""CPC_audio's spelling of :class:`CPCUnsupervisedCriterion`, so that swapping the import is
the whole change."""
