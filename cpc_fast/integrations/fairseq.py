"""fairseq wav2vec 2.0's contrastive loss, accuracy and negative sampler, on the device.

fairseq splits the loss in two: ``Wav2Vec2Model.compute_preds(x, y, negatives)`` gives the
logits cos(x_bt, [y_bt; negatives]) / ``logit_temp`` (0.1), a negative equal to the
positive in every component set to -inf, shape (N + 1, B, T); ``Wav2vecCriterion(infonce=
True)`` takes them time-major (row t·B + b), sums the cross-entropy with target 0
(``reduce=False``: one loss per row), reports ``sample_size`` = the number of rows, and
counts a row ``correct`` when the positive is the argmax and *not also the argmin* of its
logits (a row whose logits all tie is wrong). Its negatives come from
``Wav2Vec2Model.sample_negatives``: ``num_negatives`` (100) frames of the same utterance and
``cross_sample_negatives`` (0) frames of the whole batch per row, never the row itself.

Here :func:`contrastive_loss` is both halves at once, through :func:`cpc_fast.info_nce`
(cosine similarity, value masking, ``correct_on_tie="unless_all_tie"``; fused Triton kernels
on CUDA), and :func:`sample_negative_indices` draws fairseq's intended distribution on the
device::

    neg = sample_negative_indices(B, T, 100, device=x.device)  # (B, T, 100)
    out = contrastive_loss(x, y, neg)  # x = final_proj(x[mask]), y: targets, (B, T, C)
    out.loss.backward()  # as Wav2vecCriterion's loss (add its extra losses yourself)

:func:`sample_negatives` is the same draw as values, with the model method's signature.

The one signature that cannot match: fairseq hands the criterion a model, whose
``compute_preds`` already gathered the negatives. :func:`contrastive_loss` takes the
model's ``x``, ``y`` and negatives instead, as values (N, B, T, C) (what
``sample_negatives`` returns: a one-line swap for ``compute_preds`` + the criterion) or as
indices (B, T, N) from :func:`sample_negative_indices` (no gathered tensor at all).
Numerics: fairseq rounds the logits to ``x``'s dtype; here they stay float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cpc_fast.errors import UserInputError
from cpc_fast.integrations._wav2vec_rows import rows, uniform_below
from cpc_fast.losses.info_nce import UNLESS_ALL_TIE, info_nce


class FairseqLossOutput(NamedTuple):
    """What ``Wav2vecCriterion(infonce=True)`` reports for the contrastive term."""

    loss: Tensor  # () summed over the rows, or (T·B,) time-major with reduce=False
    sample_size: int  # rows: B·T
    correct: Tensor  # () int64: rows whose positive is the argmax and not the argmin
    count: int  # rows: B·T


def sample_negative_indices(
    B: int,
    T: int,
    num_negatives: int = 100,
    cross_sample_negatives: int = 0,
    *,
    padding_count: int = 0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``Wav2Vec2Model.sample_negatives``'s intended draws, as (B, T, num_negatives +
    cross_sample_negatives) int64 flat indices into the B·T frames, on ``device``.

    Row (b, t) draws ``num_negatives`` frames of its own utterance, uniformly among its
    first T - ``padding_count`` (valid) frames other than t, then ``cross_sample_negatives``
    frames uniformly among the valid frames of the whole batch other than (b, t) itself;
    with replacement, as fairseq. Padding rows (t >= T - padding_count) draw among all valid
    frames. fairseq's own sampler does not draw this (each found by running it):

    - with ``padding_count`` > 0 it offsets utterance b by b·(T - padding_count) instead of
      b·T: utterance b >= 1 draws its own frame and frames of utterance b - 1;
    - its cross-sample draws skip frame t of the flattened batch (a frame of utterance 0)
      instead of row b·T + t itself, so a row can draw itself;
    - with both kinds it concatenates the two per utterance and reshapes, which deals one
      row's draws to other rows (and their self-exclusion with them).
    """
    for name, value in (("B", B), ("T", T)):
        if value < 1:
            raise UserInputError(f"`{name}` must be >= 1, got {value}")
    if num_negatives < 0 or cross_sample_negatives < 0:
        raise UserInputError(
            "`num_negatives` and `cross_sample_negatives` must be >= 0, got "
            f"{num_negatives} and {cross_sample_negatives}"
        )
    if num_negatives + cross_sample_negatives < 1:
        raise UserInputError("`num_negatives` + `cross_sample_negatives` must be >= 1")
    valid = T - padding_count
    if not 0 <= padding_count < T:
        raise UserInputError(f"`padding_count` must be in [0, T) = [0, {T}), got {padding_count}")
    if valid < 2:
        raise UserInputError(
            f"sampling among the other frames needs T - padding_count >= 2, got {valid}"
        )
    t = torch.arange(T, device=device)
    own = (t < valid).long()  # (T,) 1 where the row's own frame is a candidate to skip
    b = torch.arange(B, device=device).view(B, 1, 1)
    draws = []
    if num_negatives:
        span = (valid - own).view(1, T, 1)
        frame = uniform_below(span, (B, T, num_negatives), generator)
        frame += (frame >= t.view(1, T, 1)) & own.view(1, T, 1).bool()  # skip the frame itself
        draws.append(b * T + frame)
    if cross_sample_negatives:
        span = (B * valid - own).view(1, T, 1)
        rank = uniform_below(span, (B, T, cross_sample_negatives), generator)
        self_rank = b * valid + t.view(1, T, 1)  # the row's own rank among the valid frames
        rank += (rank >= self_rank) & own.view(1, T, 1).bool()
        draws.append(rank // valid * T + rank % valid)
    return torch.cat(draws, 2)


def sample_negatives(
    y: Tensor,
    num: int,
    padding_count: int | None = None,
    *,
    num_negatives: int = 100,
    cross_sample_negatives: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``Wav2Vec2Model.sample_negatives(y, num, padding_count)`` with the model's two
    settings as keywords: y (B, T, C) -> (negatives (N, B, T, C) values, indices (B, T·N)
    flat into B·T), N = num_negatives + cross_sample_negatives, drawn as
    :func:`sample_negative_indices` on y's device. ``num`` must be T (the model passes
    ``y.size(1)``)."""
    if not isinstance(y, Tensor) or y.dim() != 3:
        raise UserInputError("`y` must be a (B, T, C) tensor")
    B, T, C = y.shape
    if num != T:
        raise UserInputError(f"`num` must be y's T={T} (one row per frame of y), got {num}")
    index = sample_negative_indices(
        B,
        T,
        num_negatives,
        cross_sample_negatives,
        padding_count=padding_count or 0,
        device=y.device,
        generator=generator,
    )
    values = y.reshape(B * T, C)[index.view(-1)].view(B, T, -1, C).permute(2, 0, 1, 3)
    return values, index.view(B, -1)


def contrastive_loss(
    x: Tensor,
    y: Tensor,
    negatives: Tensor,
    logit_temp: float = 0.1,
    reduce: bool = True,
    *,
    backend: str | None = None,
) -> FairseqLossOutput:
    """``compute_preds(x, y, negatives)`` + ``Wav2vecCriterion(infonce=True)``'s loss and
    accuracy, without the extra (diversity, feature penalty) losses.

    x (B, T, C) the projected context of the masked frames, y (B, T, C) their targets,
    negatives (N, B, T, C) values (as fairseq's ``sample_negatives`` returns them) or
    (B, T, N) int flat indices into B·T (:func:`sample_negative_indices`). ``reduce``: the
    loss summed over the B·T rows (fairseq's default) or per row, time-major (T·B,).
    ``backend`` as for :func:`cpc_fast.info_nce`.
    """
    r = rows(x, y, negatives, ("x", "y", "negatives"))
    loss, correct = info_nce(
        r.queries,
        r.keys,
        r.pos_index,
        r.neg_index,
        logit_temp,
        "sum" if reduce else "none",
        similarity="cosine",
        mask_duplicates="value",
        correct_on_tie=UNLESS_ALL_TIE,
        backend=backend,
        return_correct=True,
    )
    rows_count = r.B * r.T
    return FairseqLossOutput(
        loss if reduce else r.time_major(loss), rows_count, correct.sum(), rows_count
    )
