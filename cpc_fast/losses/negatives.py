"""Negative sampling for CPC's InfoNCE: N frames drawn uniformly from the same sequence.

Every sampler draws independently for every row and every draw j, uniformly over the row's
own sequence. For equal-length (B, K, L) batches, as frame numbers:

- :func:`sample_negatives` — ``torch.randint`` with an optional ``torch.Generator``; used by
  the reference backend and by the fused backend's explicit-index designs.
- :func:`philox_negatives` — materialises exactly the indices that the fused kernels draw
  in-kernel from a seed (Philox 4x32-10 via ``tl.randint4x``), so tests and debugging can
  compare the seeded kernels with the explicit-index ones.

Both map uniform integers onto ``[0, L)`` (``randint`` exactly; Philox by a 32-bit
multiply-shift, whose bias is below L / 2**32, i.e. < 3e-7 for L = 1000).

For zero-padded batches of variable length (``cpc_fast.losses.padded_info_nce``), uniform
over each utterance's L_b valid frames only:

- :func:`padded_negatives` — (B, K, L, N) frame numbers in the padded layout;
- :func:`within_sequence_negatives` — (M, N) rows of the concatenated valid frames, for the
  flattened rows.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cpc_fast.errors import UserInputError

# The kernels number Philox counters (row * ceil(N / 4) + g) in int32.
PHILOX_COUNTER_LIMIT = 2**31


class SequenceRows(Protocol):
    """Where the flattened rows of a padded batch sit (``padded_info_nce.ValidRows``)."""

    pos_index: torch.Tensor  # (M,) key row of each row's positive
    row_sequence: torch.Tensor  # (M,) sequence b of each row
    offsets: torch.Tensor  # (B,) first key row of each sequence
    lengths: torch.Tensor  # (B,) valid frames of each sequence


def sample_negatives(
    B: int,
    K: int,
    L: int,
    N: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    exclude_positive: bool = False,
) -> torch.Tensor:
    """Draws (B, K, L, N) int64 frame indices, uniform over the row's own sequence.

    Row (b, k, t) has its positive at frame ``t + k + 1``. With ``exclude_positive`` the draws
    cover the other L - 1 frames (uniformly); otherwise all L frames, as in the reference CPC
    code, so a negative may coincide with the positive.
    """
    _check_sizes(B, K, L, N, exclude_positive)
    if not exclude_positive:
        return torch.randint(0, L, (B, K, L, N), device=device, generator=generator)
    idx = torch.randint(0, L - 1, (B, K, L, N), device=device, generator=generator)
    # Skip over the positive: values at or above it move up by one, so L - 1 values map
    # one-to-one onto the frames other than the positive.
    pos = torch.arange(L, device=idx.device).view(1, 1, L, 1) + torch.arange(
        1, K + 1, device=idx.device
    ).view(1, K, 1, 1)
    return idx + (idx >= pos).long()


def philox_negatives(
    seed: int,
    B: int,
    K: int,
    L: int,
    N: int,
    *,
    device: torch.device | str,
    exclude_positive: bool = False,
) -> torch.Tensor:
    """The (B, K, L, N) int64 indices the fused kernels draw in-kernel for ``seed``.

    Needs Triton (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).
    """
    _check_sizes(B, K, L, N, exclude_positive)
    if philox_counters(B, K, L, N) >= PHILOX_COUNTER_LIMIT:
        raise UserInputError(
            "philox_negatives counts draws in int32: B*K*L*ceil(N/4) must stay below 2**31"
        )
    from cpc_fast.kernels.info_nce import materialize_negatives

    return materialize_negatives(
        philox_key(seed), B, K, L, N, torch.device(device), exclude_positive
    )


def philox_counters(B: int, K: int, L: int, N: int) -> int:
    """Philox counters the in-kernel draws of a (B, K, L) row grid use: ceil(N / 4) per row."""
    return B * K * L * ((N + 3) // 4)


def philox_key(seed: int) -> int:
    """The 64-bit Philox key the kernels use for ``seed`` (any Python int; negative ones wrap
    the same way everywhere)."""
    return int(seed) & (2**63 - 1)


def padded_negatives(
    frame_lengths: torch.Tensor,
    K: int,
    L: int,
    num_negatives: int,
    *,
    exclude_positive: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, K, L, N) frame indices, uniform over each utterance's own L_b valid frames.

    Row (b, k, t) draws from frames 0 .. L_b − 1 (or, with ``exclude_positive``, the L_b − 1
    frames other than its positive t + k + 1); rows past the end of their utterance get
    draws too, which the loss ignores.
    """
    lengths = frame_lengths.long()
    B = lengths.shape[0]
    span = lengths.view(B, 1, 1, 1) - int(exclude_positive)  # (B, 1, 1, 1)
    u = torch.rand((B, K, L, num_negatives), device=lengths.device, generator=generator)
    frame = torch.minimum((u * span).long(), (span - 1).clamp(min=0))
    if exclude_positive:
        pos = torch.arange(L, device=lengths.device).view(1, 1, L, 1) + torch.arange(
            1, K + 1, device=lengths.device
        ).view(1, K, 1, 1)
        frame = frame + (frame >= pos).long()  # skip over the positive
    return frame


def within_sequence_negatives(
    rows: SequenceRows,
    num_negatives: int,
    *,
    exclude_positive: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(M, N) key indices for the flattened rows of a padded batch, uniform over each row's
    own sequence (all its frames, or the others than its positive with ``exclude_positive``)."""
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


def check_neg_index(
    neg_index: torch.Tensor, B: int, K: int, L: int, *, check_range: bool = True
) -> int:
    """Validates a user-given (B, K, L, N) index tensor of frames; returns N. The range
    check (one device sync) can be left to kernels that guard their own reads."""
    if not isinstance(neg_index, torch.Tensor):
        raise UserInputError(f"neg_index must be a tensor, got {type(neg_index).__name__}")
    if neg_index.dtype not in (torch.int32, torch.int64):
        raise UserInputError(f"neg_index must be int32 or int64, got {neg_index.dtype}")
    if neg_index.dim() != 4 or tuple(neg_index.shape[:3]) != (B, K, L):
        raise UserInputError(
            f"neg_index must have shape (B, K, L, N) = ({B}, {K}, {L}, N), "
            f"got {tuple(neg_index.shape)}"
        )
    if neg_index.shape[3] < 1:
        raise UserInputError("neg_index must hold at least one negative per row (N >= 1)")
    if check_range:
        check_index_range(neg_index, L, "neg_index")
    return int(neg_index.shape[3])


def check_index_range(index: torch.Tensor, size: int, name: str) -> None:
    """Raises when any index falls outside [0, size): the kernels must never read past."""
    if index.numel() == 0:
        return
    lo, hi = torch.aminmax(index)  # one pass, one device sync
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= size:
        bad = lo if lo < 0 else hi
        raise UserInputError(f"{name} holds index {bad}, outside [0, {size})")


def _check_sizes(B: int, K: int, L: int, N: int, exclude_positive: bool) -> None:
    for name, value in (("B", B), ("K", K), ("L", L), ("N", N)):
        if value < 1:
            raise UserInputError(f"sample_negatives needs {name} >= 1, got {value}")
    if exclude_positive and L < 2:
        raise UserInputError(f"exclude_positive needs at least 2 frames per sequence, got L={L}")
