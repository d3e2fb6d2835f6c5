"""Addressing helpers shared by the InfoNCE kernels: int64 offsets, range-checked indices.

Compiled Triton multiplies an int32 program id by an int32 stride in int32, and the
interpreter does the same in NumPy: past 2**31 elements the offset wraps to a negative
address. Every base offset built from a program id therefore goes through int64 here.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
