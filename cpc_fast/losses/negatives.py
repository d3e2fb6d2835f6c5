"""Negative sampling for InfoNCE: N candidates drawn uniformly per row.

Every sampler draws independently for every row and every draw j, uniformly over the row's
own sequence (or, where said, the whole batch). For equal-length (B, K, L) batches, as frame
numbers:

- :func:`sample_negatives` — ``torch.randint`` with an optional ``torch.Generator``; used by
  the reference backend and by the fused backend's explicit-index designs. With
  ``across_batch`` it draws rows of the whole batch's B·L frames (CPC_audio's sampling),
  and ``rows`` draws for the first T <= L frames only.
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

For masked prediction (wav2vec 2.0), among the masked frames of each sequence only:

- :func:`masked_negatives` — (B, L, N) frames, never the frame itself, on the mask's device
  (``cpc_fast.integrations.wav2vec2.sample_negative_indices`` gives them as flat indices).
"""

from __future__ import annotations

from typing import Protocol

import torch

from cpc_fast.errors import UserInputError

# The kernels number Philox counters (row * ceil(N / 4) + g) in int32.
PHILOX_COUNTER_LIMIT = 2**31
# A row whose positive index is this drops out of the loss (PyTorch's ``ignore_index``).
IGNORE_INDEX = -100


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
    rows: int | None = None,
    across_batch: bool = False,
) -> torch.Tensor:
    """Draws (B, K, T, N) int64 negatives uniformly, T = ``rows`` (default L).

    Row (b, k, t) has its positive at frame ``t + k + 1``. The draws are frames of the row's
    own sequence, or with ``across_batch`` rows b' · L + f of the whole batch's B · L frames
    (CPC_audio's sampling). With ``exclude_positive`` they cover every candidate but the
    positive (uniformly); otherwise all of them, as in the reference CPC code, so a
    negative may coincide with the positive.
    """
    T = L if rows is None else rows
    _check_sizes(B, K, L, N, exclude_positive)
    span = B * L if across_batch else L
    if not exclude_positive:
        return torch.randint(0, span, (B, K, T, N), device=device, generator=generator)
    idx = torch.randint(0, span - 1, (B, K, T, N), device=device, generator=generator)
    # Skip over the positive: values at or above it move up by one, so span - 1 values map
    # one-to-one onto the candidates other than the positive.
    pos = torch.arange(T, device=idx.device).view(1, 1, T, 1) + torch.arange(
        1, K + 1, device=idx.device
    ).view(1, K, 1, 1)
    if across_batch:
        pos = pos + torch.arange(B, device=idx.device).view(B, 1, 1, 1) * L
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
    from cpc_fast.kernels.info_nce import materialize_negatives  # Triton is optional

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


def check_neg_index(neg_index: torch.Tensor, B: int, K: int, L: int) -> int:
    """Validates the shape of a user-given (B, K, L, N) index tensor (K may be 1: shared by
    the steps); returns N. Its range is checked by the loss that reads it."""
    if not isinstance(neg_index, torch.Tensor):
        raise UserInputError(f"`neg_index` must be a tensor, got {type(neg_index).__name__}")
    if neg_index.dtype not in (torch.int32, torch.int64):
        raise UserInputError(f"`neg_index` must be int32 or int64, got {neg_index.dtype}")
    shape = tuple(neg_index.shape)
    if neg_index.dim() != 4 or shape[0] != B or shape[1] not in (1, K) or shape[2] != L:
        raise UserInputError(
            f"`neg_index` must have shape (B, K, L, N) = ({B}, {K}, {L}, N) (or K = 1, shared "
            f"by the steps), got {shape}"
        )
    if neg_index.shape[3] < 1:
        raise UserInputError("`neg_index` must hold at least one negative per row (N >= 1)")
    return int(neg_index.shape[3])


def check_index_range(index: torch.Tensor, size: int, name: str) -> None:
    """Raises when any index falls outside [0, size): the kernels must never read past.
    Where no host read may happen, in a graph ``torch.compile`` traces or while a CUDA graph
    is being captured, the device asserts instead (an error all the same, with no sync)."""
    if index.numel() == 0:
        return
    if torch.compiler.is_compiling() or (
        index.is_cuda and torch.cuda.is_current_stream_capturing()
    ):
        inside = ((index >= 0) & (index < size)).all()
        torch._assert_async(inside, f"`{name}` holds an index outside [0, {size})")
        return
    lo, hi = torch.aminmax(index)  # one pass, one device sync
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= size:
        bad = lo if lo < 0 else hi
        raise UserInputError(f"`{name}` holds index {bad}, outside [0, {size})")


def op_checks_indices(
    pos: torch.Tensor | None, neg: torch.Tensor | None, size: int, check: bool
) -> bool:
    """Whether the fused op should still range-check its indices (``check``). In a graph
    ``torch.compile`` traces, the check is made here instead, as a device-side assertion in
    the graph, so the op (opaque to the compiler, run as is) makes no host sync."""
    if check and torch.compiler.is_compiling():
        check_candidate_ranges(pos, neg, size)
        return False
    return check


def check_candidate_ranges(pos: torch.Tensor | None, neg: torch.Tensor | None, size: int) -> None:
    """:func:`check_index_range` of ``pos_index`` (its ``IGNORE_INDEX`` rows aside) and of
    ``neg_index``: one device sync each."""
    if pos is not None:
        # Ignored rows read as index 0 (selecting the others would cost a sync of its own).
        kept = pos.masked_fill(pos == IGNORE_INDEX, 0) if size else pos[pos != IGNORE_INDEX]
        check_index_range(kept, size, "pos_index")
    if neg is not None:
        check_index_range(neg, size, "neg_index")


def _check_sizes(B: int, K: int, L: int, N: int, exclude_positive: bool) -> None:
    for name, value in (("B", B), ("K", K), ("L", L), ("N", N)):
        if value < 1:
            raise UserInputError(f"sample_negatives needs `{name}` >= 1, got {value}")
    if exclude_positive and L < 2:
        raise UserInputError(f"`exclude_positive` needs at least 2 frames per sequence, got L={L}")


def masked_negatives(
    mask: torch.Tensor, num_negatives: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, L, N) frame indices drawn uniformly among the *other* masked frames of the same
    sequence (wav2vec 2.0's sampling), on the mask's device.

    mask (B, L) bool (or 0/1 integers); every row needs at least two masked frames. A masked
    frame t draws its N negatives from the c_b - 1 masked frames other than itself (with
    replacement); unmasked frames get frame 0, as in Hugging Face's sampler (a loss over
    masked frames ignores them). Only the masked frames draw: half the random numbers of
    drawing for every frame, which is most of the time on a CPU.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise UserInputError("`mask_time_indices` must be a (B, L) tensor")
    if num_negatives < 1:
        raise UserInputError(f"`num_negatives` must be >= 1, got {num_negatives}")
    mask = mask.bool().contiguous()  # the flat views below need one stride order
    B, L = mask.shape
    counts = mask.sum(1)  # (B,)
    fewest = int(counts.min())  # one device sync: an empty row cannot be sampled from
    if fewest < 2:
        row = int(torch.argmin(counts))
        raise UserInputError(
            f"`mask_time_indices` row {row} has {fewest} masked frame(s): sampling negatives "
            "among the other masked frames needs at least 2 in every row"
        )
    # Masked frames first, in time order: ranked[b, j] is the j-th masked frame of row b.
    ranked = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # (B, L)
    rows = mask.view(-1).nonzero().squeeze(1)  # (M,) flat b * L + t of the masked frames
    sequence = rows // L
    own = (torch.cumsum(mask, 1) - 1).view(-1)[rows]  # (M,) rank of each masked frame
    span = (counts - 1)[sequence].unsqueeze(1)  # (M, 1) the others to draw from
    shape = (rows.shape[0], num_negatives)
    draw = torch.randint(0, 2**62, shape, device=mask.device, generator=generator)
    rank = draw % span  # bias < L / 2**62
    rank += rank >= own.unsqueeze(1)  # skip the frame itself
    frames = ranked.view(-1)[rank + (sequence * L).unsqueeze(1)]  # (M, N)
    out = torch.zeros((B * L, num_negatives), dtype=torch.int64, device=mask.device)
    return out.index_copy_(0, rows, frames).view(B, L, num_negatives)
