"""SpeechBrain's wav2vec 2.0 ``ContrastiveLoss`` and ``sample_negatives``, on the device.

SpeechBrain (``speechbrain.nnet.losses.ContrastiveLoss(logit_temp)``) takes the context
``x`` (B, T, C), the targets ``y`` (B, T, C) and negative *values* ``negs`` (N, B, T, C)
from ``speechbrain.lobes.models.wav2vec.sample_negatives(y, num_neg)``; its logits are
cos(x_bt, [y_bt; negs]) with a negative equal to the target by value at -inf, the
cross-entropy with target 0 over the B·T rows is *summed* after dividing by ``logit_temp``,
and it returns ``(loss, accuracy)``, the accuracy being the share of rows whose argmax is
the positive (the first maximum: a tie counts).

:class:`ContrastiveLoss` is the same module over :func:`cpc_fast.info_nce` (fused Triton
kernels on CUDA); its ``negs`` may be SpeechBrain's values (N, B, T, C), the one-line swap,
or indices (B, T, N) from :func:`sample_negative_indices`, the thin wrapper that lets the
kernels read the targets in place instead of a gathered (N, B, T, C) tensor::

    neg = sample_negative_indices(B, T, num_negatives, device=y.device)  # (B, T, N)
    loss, accuracy = ContrastiveLoss(logit_temp=0.1)(x, y, neg)

:func:`sample_negatives` is the drop-in for SpeechBrain's values sampler. Numerics:
SpeechBrain rounds the cosine to ``x``'s dtype; here the logits stay float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cpc_fast.errors import UserInputError
from cpc_fast.integrations._wav2vec_rows import rows, uniform_below
from cpc_fast.losses._checks import check_float
from cpc_fast.losses.info_nce import info_nce


def sample_negative_indices(
    B: int,
    T: int,
    num_neg: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, T, num_neg) int64 flat indices into the B·T frames: frame t of utterance b draws
    uniformly (with replacement) among the T - 1 other frames of utterance b, on ``device``.

    What SpeechBrain's ``sample_negatives`` means to draw, without its bug: it offsets
    utterance b by b·(T - 1) instead of b·T, so for b >= 1 it draws the positive itself
    with probability 1/(T - 1), draws the last b frames of utterance b - 1 and never its own
    last b frames (it also draws on the CPU whatever the device of ``y``).
    """
    for name, value in (("B", B), ("num_neg", num_neg)):
        if value < 1:
            raise UserInputError(f"`{name}` must be >= 1, got {value}")
    if T < 2:
        raise UserInputError(f"drawing among the other frames needs T >= 2, got T={T}")
    span = torch.tensor(T - 1, device=device)
    frame = uniform_below(span, (B, T, num_neg), generator)
    t = torch.arange(T, device=frame.device).view(1, T, 1)
    frame += frame >= t  # skip the frame itself: T - 1 values onto the other frames
    return frame + torch.arange(B, device=frame.device).view(B, 1, 1) * T


def sample_negatives(
    y: Tensor, num_neg: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """SpeechBrain's ``sample_negatives(y, num_neg)``: y (B, T, C) -> negative values
    (num_neg, B, T, C), drawn as :func:`sample_negative_indices` (on y's device)."""
    check_float("y", y, 3)
    B, T, C = y.shape
    index = sample_negative_indices(B, T, num_neg, device=y.device, generator=generator)
    return y.reshape(B * T, C)[index.view(-1)].view(B, T, num_neg, C).permute(2, 0, 1, 3)


class ContrastiveLoss(nn.Module):
    """SpeechBrain's ``ContrastiveLoss(logit_temp)``: forward(x (B, T, C), y (B, T, C), negs)
    -> (loss () summed over the B·T rows, accuracy () share of rows whose positive is the
    argmax, a tie counting). ``negs``: values (N, B, T, C) or indices (B, T, N) into B·T.
    ``backend`` (keyword only, not SpeechBrain's) as for :func:`cpc_fast.info_nce`."""

    def __init__(self, logit_temp: float, *, backend: str | None = None) -> None:
        super().__init__()
        if not logit_temp > 0:
            raise UserInputError(f"`logit_temp` must be positive, got {logit_temp}")
        self.logit_temp = logit_temp
        self.backend = backend

    def forward(self, x: Tensor, y: Tensor, negs: Tensor) -> tuple[Tensor, Tensor]:
        r = rows(x, y, negs, ("x", "y", "negs"))
        loss, correct = info_nce(
            r.queries,
            r.keys,
            r.pos_index,
            r.neg_index,
            self.logit_temp,
            "sum",
            similarity="cosine",
            mask_duplicates="value",
            correct_on_tie=True,
            backend=self.backend,
            return_correct=True,
        )
        return loss, correct.float().mean()
