"""What the wav2vec 2.0-style drop-ins share: their (B, T, C) tensors as InfoNCE rows.

SpeechBrain's ``ContrastiveLoss`` and fairseq's ``compute_preds`` take a context ``x``
(B, T, C), targets ``y`` (B, T, C) and negatives as *values* (N, B, T, C), and order their
logit rows time-major (row t·B + b). Here the negatives may also be *indices* (B, T, N) into
the B·T target frames, which is what lets the fused kernels read them in place instead of
gathering the (N, B, T, C) tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cpc_fast.errors import UserInputError
from cpc_fast.losses._checks import check_float
from cpc_fast.losses.negatives import check_index_range


class Rows:
    """The InfoNCE arguments of one call: queries (M, C), keys (Nk, C), pos_index (M,) and
    neg_index (M, N), M = B·T rows in (b, t) order, the positive of row b·T + t at key row
    b·T + t."""

    def __init__(self, queries: Tensor, keys: Tensor, neg_index: Tensor, B: int, T: int):
        self.queries, self.keys, self.neg_index = queries, keys, neg_index
        self.B, self.T = B, T
        self.pos_index = torch.arange(B * T, device=queries.device)

    def time_major(self, per_row: Tensor) -> Tensor:
        """(B·T,) in (b, t) order -> (T·B,) in the peers' (t, b) order."""
        return per_row.view(self.B, self.T).t().reshape(-1)


def rows(x: Tensor, y: Tensor, negatives: Tensor, names: tuple[str, str, str]) -> Rows:
    """x (B, T, C), y (B, T, C), negatives (N, B, T, C) values or (B, T, N) int32/int64 flat
    indices into the B·T frames of y -> :class:`Rows`; ``names`` are the caller's argument
    names, for the errors."""
    x_name, y_name, neg_name = names
    check_float(x_name, x, 3)
    check_float(y_name, y, 3)
    B, T, C = x.shape
    if tuple(y.shape) != (B, T, C):
        got = tuple(y.shape)
        raise UserInputError(f"`{y_name}` must have shape {(B, T, C)} like `{x_name}`, got {got}")
    if not isinstance(negatives, Tensor):
        raise UserInputError(f"`{neg_name}` must be a tensor, got {type(negatives).__name__}")
    keys = y.reshape(B * T, C)
    if negatives.is_floating_point():
        if negatives.dim() != 4 or tuple(negatives.shape[1:]) != (B, T, C):
            raise UserInputError(
                f"`{neg_name}` values must have shape (N, B, T, C) = (N, {B}, {T}, {C}), got "
                f"{tuple(negatives.shape)}"
            )
        N = negatives.shape[0]
        # The given values follow the targets as key rows B·T + (b·T + t)·N + n.
        keys = torch.cat([keys, negatives.permute(1, 2, 0, 3).reshape(B * T * N, C)])
        neg_index = B * T + torch.arange(B * T * N, device=x.device).view(B * T, N)
    elif negatives.dtype in (torch.int32, torch.int64):
        if negatives.dim() != 3 or tuple(negatives.shape[:2]) != (B, T):
            raise UserInputError(
                f"`{neg_name}` indices must have shape (B, T, N) = ({B}, {T}, N), got "
                f"{tuple(negatives.shape)}"
            )
        if not torch.compiler.is_compiling():
            check_index_range(negatives, B * T, neg_name)
        neg_index = negatives.reshape(B * T, -1)
    else:
        raise UserInputError(
            f"`{neg_name}` must be float values (N, B, T, C) or int32/int64 indices (B, T, N), "
            f"got {negatives.dtype}"
        )
    if neg_index.shape[1] < 1:
        raise UserInputError(f"`{neg_name}` must hold at least one negative per frame")
    return Rows(x.reshape(B * T, C), keys, neg_index, B, T)


def uniform_below(span: Tensor, shape: tuple[int, ...], generator: torch.Generator | None):
    """Integers uniform in [0, span) (span broadcast against ``shape``), on span's device: a
    62-bit draw modulo span (bias < span / 2**62), so one kernel serves every span."""
    draw = torch.randint(0, 2**62, shape, device=span.device, generator=generator)
    return draw % span
