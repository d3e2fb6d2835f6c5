"""CPC's InfoNCE over a zero-padded batch of variable-length sequences (the ``joint`` setup).

Padded frames of a short utterance must never serve as a query, a positive or a negative.
:func:`masked_cpc_info_nce` counts only the valid rows and frames:

* keys: the valid latent frames of every utterance, concatenated: (N_k, D_z), utterance b at
  rows offset_b .. offset_b + L_b;
* queries: predictions[b, k, t] for every t with t + k + 1 < L_b: (M, D_z);
* positive of a row: key offset_b + t + k + 1; negatives: ``num_negatives`` frames drawn
  uniformly from the same utterance's valid frames (all L_b of them, or the L_b − 1 others
  with ``exclude_positive``), fresh for every row, as CPC does within a sequence
  (:func:`cpc_fast.losses.negatives.within_sequence_negatives`,
  :func:`cpc_fast.losses.negatives.padded_negatives`).

The loss is the mean over all valid rows (every b, k and t), the paper's averaging. On a
batch of equal lengths it equals ``cpc_info_nce`` given the same negatives (tested).

The backend is chosen as for every InfoNCE here
(:func:`cpc_fast.losses.info_nce.resolve_backend`), and each computes the same loss for the
same negatives:

* ``fused``: the flattened rows above through the general ``info_nce`` (the Triton kernels).
* ``reference``: :func:`padded_cpc_info_nce` keeps the padded (B, K, L) layout, scores the
  queries of a block of steps against all L frames of their own utterance with one batched
  (L x D)(D x L) matmul, reads the N + 1 drawn scores from it and averages the valid rows
  (the scheme of the chunked reference in ``cpc_fast.losses.info_nce_reference``, over
  blocks of steps split rather than sliced: per-step slices cost one zero-filled
  full-size gradient each, half the time at these sizes). Gathering (M, N + 1, D)
  candidates and scattering their gradients back is 6x slower on a CPU at the demo's sizes
  (``bench/bench_joint_step.py``). Batches whose (B, L, L) scores exceed
  ``_SCORE_ELEMENTS`` (long utterances) take the flattened rows through the general
  reference instead, which needs less memory.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cpc_fast.errors import UserInputError
from cpc_fast.losses.info_nce import info_nce, resolve_backend
from cpc_fast.losses.info_nce_reference import compute_dtype
from cpc_fast.losses.negatives import padded_negatives, within_sequence_negatives

# Scores per block of the CPU path: (B, k, L, L) stays near this many elements (32 MB in
# float32). Batches whose (B, L, L) alone is larger take the memory-lean gather path.
_SCORE_ELEMENTS = 1 << 23


class ValidRows(NamedTuple):
    """The rows of a padded batch that have a positive inside their own sequence, flattened."""

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
    valid = torch.arange(L, device=z.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
    keys = z[valid]  # (N_k, D)
    offsets = torch.cumsum(lengths, 0) - lengths  # (B,)
    b_idx, k_idx, t_idx = valid_row_mask(lengths, K, L).nonzero(as_tuple=True)
    queries = predictions[b_idx, k_idx, t_idx]  # (M, D)
    pos_index = offsets[b_idx] + t_idx + k_idx + 1
    return ValidRows(queries, keys, pos_index, b_idx, offsets, lengths)


def valid_row_mask(frame_lengths: torch.Tensor, K: int, L: int) -> torch.Tensor:
    """(B, K, L) bool: row (b, k, t) has its positive inside utterance b (t + k + 1 < L_b)."""
    lengths = frame_lengths.long().view(-1, 1, 1)
    t = torch.arange(L, device=lengths.device).view(1, 1, L)
    k = torch.arange(K, device=lengths.device).view(1, K, 1)
    return t + k + 1 < lengths


def padded_cpc_info_nce(
    predictions: torch.Tensor,
    z: torch.Tensor,
    frame_lengths: torch.Tensor,
    neg_frames: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """CPC InfoNCE over the valid rows of a padded batch, in its padded layout; () mean.

    predictions (B, K, L, D), z (B, L, D), frame_lengths (B,), neg_frames (B, K, L, N)
    frame indices that must lie inside each row's own utterance (``padded_negatives``).
    The queries of a block of steps are scored against every frame of their utterance,
    (B, k, L, D)(B, 1, D, L) -> (B, k, L, L), and the N + 1 drawn scores read from that;
    rows with t + k + 1 >= L_b are left out of the mean, so neither they nor the padded
    frames reach the loss or its gradient. Scores and logsumexp run in float32 (float64 for
    float64 inputs), autocast off, as in the reference InfoNCE.
    """
    B, K, L, _ = predictions.shape
    mask = valid_row_mask(frame_lengths.to(z.device), K, L)  # (B, K, L)
    count = int(mask.sum())
    if count == 0:
        raise ValueError("no utterance in the batch is longer than two frames")
    dtype = compute_dtype(predictions, z)
    t = torch.arange(L, device=z.device).view(1, L)
    k = torch.arange(1, K + 1, device=z.device).view(K, 1)
    pos = (t + k).clamp(max=L - 1).expand(B, K, L).unsqueeze(3)  # rows past the end: masked
    index = torch.cat([pos, neg_frames.long()], 3)  # (B, K, L, N + 1), positive first
    steps = max(1, _SCORE_ELEMENTS // (B * L * L))  # prediction steps per score block
    total = predictions.new_zeros((), dtype=dtype)
    with torch.autocast(z.device.type, enabled=False):
        keys = z.to(dtype).transpose(1, 2).unsqueeze(1)  # (B, 1, D, L)
        # split (not slicing) so the backward concatenates the blocks' gradients instead of
        # adding one zero-filled full-size gradient per block.
        blocks = torch.split(predictions.to(dtype), steps, dim=1)
        for first, queries in zip(range(0, K, steps), blocks, strict=True):
            last = first + queries.shape[1]
            scores = torch.matmul(queries, keys).gather(3, index[:, first:last]) / temperature
            rows = torch.logsumexp(scores, -1) - scores[..., 0]  # (B, k, L)
            total = total + rows[mask[:, first:last]].sum()
    return total / count


def _frames_from_key_rows(
    neg_index: torch.Tensor, rows: ValidRows, B: int, K: int, L: int
) -> torch.Tensor:
    """(M, N) rows of the flattened keys -> (B, K, L, N) frames of each row's utterance."""
    b = rows.row_sequence
    frame = neg_index.long() - rows.offsets[b].unsqueeze(1)  # (M, N)
    outside = (frame < 0) | (frame >= rows.lengths[b].unsqueeze(1))
    if outside.any():
        raise UserInputError(
            "neg_index holds keys of another utterance than the row's own: the joint "
            "InfoNCE draws negatives within each utterance"
        )
    frames = torch.zeros((B, K, L, neg_index.shape[1]), dtype=torch.long, device=frame.device)
    mask = valid_row_mask(rows.lengths, K, L)
    frames[mask] = frame  # both in (b, k, t) order
    return frames


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
    backend: str | None = None,
) -> torch.Tensor:
    """CPC InfoNCE over the valid frames of a zero-padded batch; () mean over valid rows.

    ``backend`` is resolved as for ``info_nce`` (argument, ``CPC_FAST_LOSS_BACKEND``, or by
    the tensors' device). ``fused`` runs the flattened rows through the general ``info_nce``;
    ``reference`` runs :func:`padded_cpc_info_nce` (see the module docstring), unless one
    (B, L, L) score block would exceed ``_SCORE_ELEMENTS`` (long utterances), where the
    memory-lean flattened rows are taken. Same loss for the same negatives.

    Args:
        predictions: (B, K, L, D); predictions[:, k, t] predicts z[:, t + k + 1].
        z: (B, L, D) latent frames.
        frame_lengths: (B,) valid frames per utterance (samples // 160).
        neg_index: (M, N) explicit negatives into the flattened keys (tests), each inside
            its row's own utterance; else drawn.
    """
    B, K, L, _ = predictions.shape
    backend = resolve_backend(backend, predictions, z)
    if backend == "reference" and B * L * L <= _SCORE_ELEMENTS:
        lengths = frame_lengths.to(z.device).long()
        if neg_index is None:
            neg_frames = padded_negatives(
                lengths,
                K,
                L,
                num_negatives,
                exclude_positive=exclude_positive,
                generator=generator,
            )
        else:
            rows = valid_rows(predictions.detach(), z.detach(), lengths)
            neg_frames = _frames_from_key_rows(neg_index, rows, B, K, L)
        return padded_cpc_info_nce(predictions, z, lengths, neg_frames, temperature)

    rows = valid_rows(predictions, z, frame_lengths)
    if rows.pos_index.numel() == 0:
        raise ValueError("no utterance in the batch is longer than two frames")
    drawn_here = neg_index is None
    if drawn_here:
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
        backend=backend,
        check_indices=not drawn_here,  # our own draws are in range: skip the host sync on CUDA
    )


__all__ = [
    "ValidRows",
    "masked_cpc_info_nce",
    "padded_cpc_info_nce",
    "valid_row_mask",
    "valid_rows",
]
