"""In-kernel negative sampling (design (b)): Philox draws regenerated wherever they are needed.

Row (b, k, t) of a (B, K, L) row grid owns Philox counters ``row * n_groups + g`` for
g < n_groups = ceil(N / 4); counter g yields draws 4g .. 4g + 3 (``tl.randint4x``), so a row's
N draws never depend on the block size or on which kernel regenerates them. A draw maps a
uniform 32-bit integer r onto ``[0, span)`` as ``(r * span) >> 32``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .indexing import checked_index

# Kernels are laid out by hand (argument groups per line), as in the Triton tutorials.
# fmt: off


@triton.jit
def load_seed(seed_ptr, SAMPLED: tl.constexpr):
    """The Philox key, read on the device from a 1-element int64 tensor. A seed that changes
    every step is never a kernel argument: Triton would specialise an integer on being 1 or
    a multiple of 16 (a recompile for about one step in 16), and a CUDA graph would replay
    the value it captured instead of reading the current one."""
    if SAMPLED:
        return tl.load(seed_ptr)
    else:
        return 0


@triton.jit
def _to_frame(r, span, pos, EXCLUDE_POS: tl.constexpr):
    r = r.to(tl.uint32, bitcast=True)
    idx = ((r.to(tl.uint64) * span.to(tl.uint64)) >> 32).to(tl.int32)
    if EXCLUDE_POS:
        # span = L - 1: skipping the positive maps L - 1 values onto the other frames.
        idx = idx + (idx >= pos).to(tl.int32)
    return idx


@triton.jit
def philox_negatives4(seed, row, g, n_groups, n_frames, pos, EXCLUDE_POS: tl.constexpr):
    """Draws 4g .. 4g + 3 of each row in ``row`` (int32 row ids): four (rows,) int32 frames."""
    span = n_frames - 1 if EXCLUDE_POS else n_frames
    r0, r1, r2, r3 = tl.randint4x(seed, row * n_groups + g)
    return (
        _to_frame(r0, span, pos, EXCLUDE_POS),
        _to_frame(r1, span, pos, EXCLUDE_POS),
        _to_frame(r2, span, pos, EXCLUDE_POS),
        _to_frame(r3, span, pos, EXCLUDE_POS),
    )


@triton.jit
def negatives4(neg_row, stride_nn, row_mask, g, N, seed, row, n_groups, n_frames, pos,
               SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr):
    """Negatives 4g .. 4g + 3 of each row, read from ``neg_row`` or drawn (SAMPLED), four
    (rows,) masks telling which of them exist (j < N), and a (rows,) flag for a read index
    outside [0, n_frames). Handing the kernels four at a time keeps four independent
    gathers in flight per loop step."""
    j = 4 * g + row * 0  # per-row copy of the draw number: masks must be tensors
    a0, a1, a2, a3 = j < N, j + 1 < N, j + 2 < N, j + 3 < N
    if SAMPLED:
        i0, i1, i2, i3 = philox_negatives4(seed, row, g, n_groups, n_frames, pos, EXCLUDE_POS)
        bad = row < 0
    else:
        ptr = neg_row + j * stride_nn
        i0, b0 = checked_index(ptr, row_mask & a0, n_frames)
        i1, b1 = checked_index(ptr + stride_nn, row_mask & a1, n_frames)
        i2, b2 = checked_index(ptr + 2 * stride_nn, row_mask & a2, n_frames)
        i3, b3 = checked_index(ptr + 3 * stride_nn, row_mask & a3, n_frames)
        bad = b0 | b1 | b2 | b3
    return i0, i1, i2, i3, a0, a1, a2, a3, bad


@triton.jit
def _materialize_negatives_kernel(out_ptr, seed_ptr, K, L, N, n_groups, n_frames,
                                  EXCLUDE_POS: tl.constexpr, BLOCK_M: tl.constexpr):
    """out (B, K, L, N) int64 contiguous: the draws SAMPLED kernels make for the seed at
    ``seed_ptr`` over sequences of ``n_frames`` frames (L rows per step, L <= n_frames)."""
    seed = load_seed(seed_ptr, True)
    pid_t = tl.program_id(0)
    k = tl.program_id(1)
    b = tl.program_id(2)
    offs_t = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = offs_t < L
    row = (b * K + k) * L + offs_t
    pos = offs_t + k + 1
    out = out_ptr + row.to(tl.int64) * N
    for g in range(0, n_groups):
        i0, i1, i2, i3, a0, a1, a2, a3, _ = negatives4(out, 0, row_mask, g, N, seed, row,
                                                       n_groups, n_frames, pos, True,
                                                       EXCLUDE_POS)
        j = 4 * g
        tl.store(out + j, i0.to(tl.int64), mask=row_mask & a0)
        tl.store(out + j + 1, i1.to(tl.int64), mask=row_mask & a1)
        tl.store(out + j + 2, i2.to(tl.int64), mask=row_mask & a2)
        tl.store(out + j + 3, i3.to(tl.int64), mask=row_mask & a3)
