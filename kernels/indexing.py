"""Addressing helpers shared by the InfoNCE kernels: int64 offsets, range-checked indices,
the per-row outputs.

Compiled Triton multiplies an int32 program id by an int32 stride in int32, and the
interpreter does the same in NumPy: past 2**31 elements the offset wraps to a negative
address. Every base offset built from a program id therefore goes through int64 here.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Kernels are laid out by hand (argument groups per line), as in the Triton tutorials.
# fmt: off


@triton.jit
def bk_base(base, b, k, stride_b, stride_k):
    """Pointer to block (b, k) of a strided (B, K, ...) tensor, offsets in int64."""
    return base + tl.cast(b, tl.int64) * stride_b + tl.cast(k, tl.int64) * stride_k


@triton.jit
def row_ptrs(base, b, k, offs_t, stride_b, stride_k, stride_t):
    """(rows,) pointers to rows (b, k, offs_t) of a strided (B, K, L, ...) tensor."""
    return bk_base(base, b, k, stride_b, stride_k) + offs_t.to(tl.int64) * stride_t


@triton.jit
def checked_index(ptr, mask, n_frames):
    """Loads (rows,) indices; one outside [0, n_frames) reads as 0 and is flagged, so no
    kernel ever dereferences it (its row's loss becomes NaN instead)."""
    i = tl.load(ptr, mask=mask, other=0)
    bad = (i < 0) | (i >= n_frames)  # compared in the stored width: no int32 wrap-around
    return tl.where(bad, 0, i).to(tl.int32), bad


# PyTorch's ``ignore_index`` convention: a row whose positive is this index drops out.
IGNORE = tl.constexpr(-100)


@triton.jit
def checked_positive(ptr, mask, n_frames):
    """Loads (rows,) positives: (index, flagged out of range, row ignored). An ignored row
    (IGNORE) is neither out of range nor active; its index reads as 0 like a flagged one."""
    i = tl.load(ptr, mask=mask, other=0)
    ignored = i == IGNORE
    bad = ((i < 0) | (i >= n_frames)) & ~ignored
    return tl.where(bad | ignored, 0, i).to(tl.int32), bad, ignored


@triton.jit
def store_row_outputs(lse_ptr, loss_ptr, correct_ptr, row, out_mask, row_mask, lse, s_pos,
                      neg_max, tied, bad, ON_TIE: tl.constexpr):
    """Stores every row's lse (NaN where ``bad``: an index outside the keys), loss (0 on rows
    that do not count) and correct: the positive above every negative that is not a tie
    (``neg_max``) with no tie, or at or above it (ON_TIE: a tie counts)."""
    lse = tl.where(bad, float("nan"), lse)
    if ON_TIE:
        correct = s_pos >= neg_max
    else:
        correct = (s_pos > neg_max) & ~tied
    tl.store(lse_ptr + row, lse, mask=out_mask)
    tl.store(loss_ptr + row, tl.where(row_mask, lse - s_pos, 0.0), mask=out_mask)
    tl.store(correct_ptr + row, (correct & ~bad & row_mask).to(tl.int8), mask=out_mask)
