"""The ``joint`` setup: a CPC model and the recognizer trained end to end from raw audio.

    wave (B, T) --CPC--> z (B, L, D_z), c (B, L, D_c), predictions (B, K, L, D_z)
    loss = CCC loss(recognizer(c, frames)) + λ · InfoNCE over the VALID frames only

Variable-length batches are zero-padded (``pad_collate``), so the padded frames of a short
utterance must never serve as a query, a positive or a negative. :func:`masked_cpc_info_nce`
flattens the valid rows and frames and calls the general ``info_nce``:

* keys: the valid latent frames of every utterance, concatenated: (N_k, D_z), utterance b at
  rows offset_b .. offset_b + L_b;
* queries: predictions[b, k, t] for every t with t + k + 1 < L_b: (M, D_z);
* positive of a row: key offset_b + t + k + 1; negatives: ``num_negatives`` frames drawn
  uniformly from the same utterance's valid frames (all L_b of them, or the L_b − 1 others
  with ``exclude_positive``), fresh for every row, as CPC does within a sequence.

The loss is the mean over all valid rows (every b, k and t), the paper's averaging. On a
batch of equal lengths it equals ``cpc_info_nce`` given the same negatives (tested).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cpc_fast.models.recognizer import EmotionRecognizer, frame_mask


class ValidRows(NamedTuple):
    queries: torch.Tensor  # (M, D)
    keys: torch.Tensor  # (N_k, D)
    pos_index: torch.Tensor  # (M,) into keys
    row_sequence: torch.Tensor  # (M,) b of each row
    offsets: torch.Tensor  # (B,) first key of each sequence
    lengths: torch.Tensor  # (B,) valid frames


def valid_rows(
    predictions: torch.Tensor, z: torch.Tensor, frame_lengths: torch.Tensor
) -> ValidRows:
    """Flattens the rows of a padded batch that have a positive inside their own sequence.

    predictions (B, K, L, D), z (B, L, D), frame_lengths (B,) -> :class:`ValidRows`.
    """
    B, K, L, _ = predictions.shape
    lengths = frame_lengths.to(z.device).long()
    keys = z[frame_mask(lengths, L)]  # (N_k, D)
    offsets = torch.cumsum(lengths, 0) - lengths  # (B,)
    t = torch.arange(L, device=z.device).view(1, 1, L)
    k = torch.arange(K, device=z.device).view(1, K, 1)
    rows = t + k + 1 < lengths.view(B, 1, 1)  # (B, K, L)
    b_idx, k_idx, t_idx = rows.nonzero(as_tuple=True)
    queries = predictions[b_idx, k_idx, t_idx]  # (M, D)
    pos_index = offsets[b_idx] + t_idx + k_idx + 1
    return ValidRows(queries, keys, pos_index, b_idx, offsets, lengths)


def within_sequence_negatives(
    rows: ValidRows,
    num_negatives: int,
    *,
    exclude_positive: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(M, N) key indices, uniform over each row's own sequence."""
    M = rows.pos_index.shape[0]
    span = rows.lengths[rows.row_sequence]  # (M,) frames of the row's sequence
    if exclude_positive:
        span = span - 1
    u = torch.rand((M, num_negatives), device=span.device, generator=generator)
    frame = torch.minimum((u * span.unsqueeze(1)).long(), (span - 1).unsqueeze(1))  # (M, N)
    start = rows.offsets[rows.row_sequence].unsqueeze(1)  # (M, 1)
    index = start + frame
    if exclude_positive:
        # Values at or past the positive move up by one: the L_b − 1 other frames, uniformly.
        index = index + (index >= rows.pos_index.unsqueeze(1)).long()
    return index


def masked_cpc_info_nce(
    predictions: torch.Tensor,
    z: torch.Tensor,
    frame_lengths: torch.Tensor,
    num_negatives: int = 50,
    temperature: float = 1.0,
    *,
    exclude_positive: bool = False,
    neg_index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CPC InfoNCE over the valid frames of a zero-padded batch; () mean over valid rows.

    Args:
        predictions: (B, K, L, D); predictions[:, k, t] predicts z[:, t + k + 1].
        z: (B, L, D) latent frames.
        frame_lengths: (B,) valid frames per utterance (samples // 160).
        neg_index: (M, N) explicit negatives into the flattened keys (tests), else drawn.
    """
    from cpc_fast.losses.info_nce import info_nce

    rows = valid_rows(predictions, z, frame_lengths)
    if rows.pos_index.numel() == 0:
        raise ValueError("no utterance in the batch is longer than two frames")
    if neg_index is None:
        neg_index = within_sequence_negatives(
            rows, num_negatives, exclude_positive=exclude_positive, generator=generator
        )
    return info_nce(
        rows.queries,
        rows.keys,
        rows.pos_index,
        neg_index,
        temperature=temperature,
        reduction="mean",
    )


class JointModel(nn.Module):
    """A CPC model feeding the recognizer; both trained together.

    ``forward(wave (B, T), lengths (B,) samples)`` -> (predictions (B, 3), CPCOutput).
    """

    def __init__(self, cpc: nn.Module, recognizer: EmotionRecognizer) -> None:
        super().__init__()
        self.cpc = cpc
        self.recognizer = recognizer

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor):
        out = self.cpc(wave)
        frames = torch.clamp(lengths // self.cpc.frame_hop, max=out.c.shape[1])
        return self.recognizer(out.c, frames), out


__all__ = [
    "JointModel",
    "ValidRows",
    "masked_cpc_info_nce",
    "valid_rows",
    "within_sequence_negatives",
]
