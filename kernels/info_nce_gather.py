"""Designs (a) and (b): gather-based InfoNCE, one program per block of BLOCK_M rows.

Rows form a (B, K, L) grid addressed through strides, so the CPC predictions tensor (a
permuted, non-contiguous view) is read in place; the general ``info_nce`` form is the grid
(1, 1, M). Each program keeps its query rows in registers and walks the N + 1 candidates,
gathering one key row per query row per step, so no (rows, N + 1, D) tensor ever exists.

- CPC: the positive of row (b, k, t) is frame t + k + 1 of sequence b and rows with
  t + k + 1 >= L are skipped; otherwise positives come from ``pos_ptr`` and all rows count.
- SAMPLED (design (b)): negatives are regenerated from ``seed`` (see ``sampling.py``) instead
  of read from ``neg_ptr``.

Forward stores per row only lse, loss and correctness. Backward recomputes the scores and
either adds d_keys with fp32 atomics (ATOMIC, fast, run-to-run order-dependent rounding) or
leaves d_keys to ``_dk_segment_kernel``, which owns one key row per program and sums its
contributions in a fixed order (deterministic).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .indexing import bk_base, checked_index, row_ptrs
from .sampling import negatives4

# Kernels are laid out by hand (argument groups per line), as in the Triton tutorials.
# fmt: off


@triton.jit
def _load_rows(base, rows, stride_row, offs_d, stride_d, mask):
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + offs_d[None, :] * stride_d
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _score(q, key_base, idx, stride_kt, offs_d, stride_kd, mask, scale):
    """(rows,) fp32 <q_r, keys[idx_r]> * scale, and the gathered (rows, D) key tile."""
    c = _load_rows(key_base, idx, stride_kt, offs_d, stride_kd, mask)
    return tl.sum(q * c, axis=1) * scale, c


@triton.jit
def _positives(pos_ptr, offs_t, k, stride_pt, row_mask, n_frames, CPC: tl.constexpr):
    """(rows,) int32 key rows of the positives and a flag for a given one out of range."""
    if CPC:
        return offs_t + k + 1, offs_t < 0
    return checked_index(pos_ptr + offs_t.to(tl.int64) * stride_pt, row_mask, n_frames)


@triton.jit
def _fwd_fold(s, idx, active, pos, m, l, neg_max, tied):
    """Folds one negative score per row into the running (max, sum) logsumexp state."""
    s = tl.where(active, s, float("-inf"))
    m_new = tl.maximum(m, s)
    l = l * tl.exp(m - m_new) + tl.exp(s - m_new)
    # A negative drawn at the positive's own index ties with it exactly.
    tied = tied | ((idx == pos) & active)
    return m_new, l, tl.maximum(neg_max, s), tied


@triton.jit
def _info_nce_fwd_kernel(
    q_ptr, key_ptr, pos_ptr, neg_ptr,
    lse_ptr, loss_ptr, correct_ptr,  # (B, K, L) contiguous outputs
    K, L, D, N, n_groups, n_frames, seed, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_kb, stride_kt, stride_kd,
    stride_pt,
    stride_nb, stride_nk, stride_nt, stride_nn,
    CPC: tl.constexpr, SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_t = tl.program_id(0)
    k = tl.program_id(1)
    b = tl.program_id(2)
    offs_t = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    n_rows = L - k - 1 if CPC else L
    row_mask = offs_t < n_rows
    offs_d = tl.arange(0, BLOCK_D)
    row = (b * K + k) * L + offs_t  # < 2**31 (launcher): per-row outputs and Philox counters

    q_base = bk_base(q_ptr, b, k, stride_qb, stride_qk)
    key_base = bk_base(key_ptr, b, 0, stride_kb, 0)
    neg_row = row_ptrs(neg_ptr, b, k, offs_t, stride_nb, stride_nk, stride_nt)
    pos, bad = _positives(pos_ptr, offs_t, k, stride_pt, row_mask, n_frames, CPC)
    mask = row_mask[:, None] & (offs_d < D)[None, :]
    q = _load_rows(q_base, offs_t, stride_qt, offs_d, stride_qd, mask)
    s_pos, _ = _score(q, key_base, pos, stride_kt, offs_d, stride_kd, mask, scale)

    m = s_pos
    l = tl.full((BLOCK_M,), 1.0, tl.float32)
    neg_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    tied = offs_t < 0
    for g in range(0, n_groups):
        i0, i1, i2, i3, a0, a1, a2, a3, bad_g = negatives4(neg_row, stride_nn, row_mask, g, N,
                                                           seed, row, n_groups, n_frames, pos,
                                                           SAMPLED, EXCLUDE_POS)
        bad = bad | bad_g
        s0, _ = _score(q, key_base, i0, stride_kt, offs_d, stride_kd, mask & a0[:, None], scale)
        s1, _ = _score(q, key_base, i1, stride_kt, offs_d, stride_kd, mask & a1[:, None], scale)
        s2, _ = _score(q, key_base, i2, stride_kt, offs_d, stride_kd, mask & a2[:, None], scale)
        s3, _ = _score(q, key_base, i3, stride_kt, offs_d, stride_kd, mask & a3[:, None], scale)
        m, l, neg_max, tied = _fwd_fold(s0, i0, a0, pos, m, l, neg_max, tied)
        m, l, neg_max, tied = _fwd_fold(s1, i1, a1, pos, m, l, neg_max, tied)
        m, l, neg_max, tied = _fwd_fold(s2, i2, a2, pos, m, l, neg_max, tied)
        m, l, neg_max, tied = _fwd_fold(s3, i3, a3, pos, m, l, neg_max, tied)

    # A row holding an index outside the keys gets NaN (and NaN gradients): loud, never a
    # read past the tensor. Backward recomputes nothing for it but NaN from this lse.
    lse = tl.where(bad, float("nan"), m + tl.log(l))
    out_mask = offs_t < L
    tl.store(lse_ptr + row, lse, mask=out_mask)
    tl.store(loss_ptr + row, tl.where(row_mask, lse - s_pos, 0.0), mask=out_mask)
    correct = (s_pos > neg_max) & ~tied & ~bad & row_mask
    tl.store(correct_ptr + row, correct.to(tl.int8), mask=out_mask)


@triton.jit
def _bwd_step(q, key_base, idx, active, stride_kt, offs_d, stride_kd, mask, scale, lse, g, dq,
              dk_base, stride_dkt, stride_dkd, ATOMIC: tl.constexpr):
    """Adds one negative's softmax weight to dq (and, with ATOMIC, to its key's gradient)."""
    mask = mask & active[:, None]
    s, c = _score(q, key_base, idx, stride_kt, offs_d, stride_kd, mask, scale)
    w = tl.where(active, g * tl.exp(s - lse), 0.0)
    if ATOMIC:
        ptrs = dk_base + idx.to(tl.int64)[:, None] * stride_dkt + offs_d[None, :] * stride_dkd
        tl.atomic_add(ptrs, w[:, None] * q, mask=mask, sem="relaxed")
    return dq + w[:, None] * c


@triton.jit
def _info_nce_bwd_kernel(
    q_ptr, key_ptr, pos_ptr, neg_ptr, lse_ptr, grad_ptr,
    dq_ptr, dk_ptr,  # dq strided like q; dk (B, Lk, D) fp32, used only with ATOMIC
    K, L, D, N, n_groups, n_frames, seed, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_kb, stride_kt, stride_kd,
    stride_pt,
    stride_nb, stride_nk, stride_nt, stride_nn,
    stride_dqb, stride_dqk, stride_dqt, stride_dqd,
    stride_dkb, stride_dkt, stride_dkd,
    CPC: tl.constexpr, SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr,
    ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_t = tl.program_id(0)
    k = tl.program_id(1)
    b = tl.program_id(2)
    offs_t = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    n_rows = L - k - 1 if CPC else L
    row_mask = offs_t < n_rows
    offs_d = tl.arange(0, BLOCK_D)
    row = (b * K + k) * L + offs_t

    q_base = bk_base(q_ptr, b, k, stride_qb, stride_qk)
    key_base = bk_base(key_ptr, b, 0, stride_kb, 0)
    dk_base = bk_base(dk_ptr, b, 0, stride_dkb, 0)
    neg_row = row_ptrs(neg_ptr, b, k, offs_t, stride_nb, stride_nk, stride_nt)
    # Out-of-range indices read row 0; forward stored NaN as their row's lse.
    pos, _ = _positives(pos_ptr, offs_t, k, stride_pt, row_mask, n_frames, CPC)
    mask = row_mask[:, None] & (offs_d < D)[None, :]
    q = _load_rows(q_base, offs_t, stride_qt, offs_d, stride_qd, mask)
    # d loss_row / d s_j = g (p_j - [j = 0]); the 1/τ of s_j = <q, c_j>/τ is folded into g.
    g = tl.load(grad_ptr + row, mask=row_mask, other=0.0) * scale
    lse = tl.load(lse_ptr + row, mask=row_mask, other=0.0)

    s_pos, c = _score(q, key_base, pos, stride_kt, offs_d, stride_kd, mask, scale)
    w0 = g * (tl.exp(s_pos - lse) - 1.0)
    dq = w0[:, None] * c
    if ATOMIC:
        ptrs = dk_base + pos.to(tl.int64)[:, None] * stride_dkt + offs_d[None, :] * stride_dkd
        tl.atomic_add(ptrs, w0[:, None] * q, mask=mask, sem="relaxed")
    for gi in range(0, n_groups):
        i0, i1, i2, i3, a0, a1, a2, a3, _ = negatives4(neg_row, stride_nn, row_mask, gi, N, seed,
                                                       row, n_groups, n_frames, pos, SAMPLED,
                                                       EXCLUDE_POS)
        dq = _bwd_step(q, key_base, i0, a0, stride_kt, offs_d, stride_kd, mask, scale, lse, g,
                       dq, dk_base, stride_dkt, stride_dkd, ATOMIC)
        dq = _bwd_step(q, key_base, i1, a1, stride_kt, offs_d, stride_kd, mask, scale, lse, g,
                       dq, dk_base, stride_dkt, stride_dkd, ATOMIC)
        dq = _bwd_step(q, key_base, i2, a2, stride_kt, offs_d, stride_kd, mask, scale, lse, g,
                       dq, dk_base, stride_dkt, stride_dkd, ATOMIC)
        dq = _bwd_step(q, key_base, i3, a3, stride_kt, offs_d, stride_kd, mask, scale, lse, g,
                       dq, dk_base, stride_dkt, stride_dkd, ATOMIC)

    # Rows past the valid range get an exact zero gradient (the grid covers all L rows).
    dq_ptrs = (bk_base(dq_ptr, b, k, stride_dqb, stride_dqk)
               + offs_t.to(tl.int64)[:, None] * stride_dqt + offs_d[None, :] * stride_dqd)
    out_mask = (offs_t < L)[:, None] & (offs_d < D)[None, :]
    tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dk_segment_kernel(
    q_ptr, key_ptr, lse_ptr, grad_ptr,
    order_ptr,  # (entries,) flat candidate ids (row * (N + 1) + slot), grouped by key row
    seg_ptr,  # (B * Lk + 1,) start of each key row's entries in order_ptr
    dk_ptr,  # (B, Lk, D) strided like keys' gradient
    K, L, D, Lk, n_cand, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_kb, stride_kt, stride_kd,
    stride_dkb, stride_dkt, stride_dkd,
    BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Deterministic d_keys: one key row per program, its entries summed in a fixed order."""
    f = tl.program_id(0).to(tl.int64)  # frame * stride_kt passes 2**31 for 10**7 keys of D=256
    b = f // Lk
    frame = f % Lk
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    key = tl.load(key_ptr + b * stride_kb + frame * stride_kt + offs_d * stride_kd, mask=d_mask,
                  other=0.0).to(tl.float32)
    start = tl.load(seg_ptr + f)
    end = tl.load(seg_ptr + f + 1)
    acc = tl.zeros((BLOCK_E, BLOCK_D), tl.float32)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        e_mask = offs_e < end
        entry = tl.load(order_ptr + offs_e, mask=e_mask, other=0)
        row = entry // n_cand
        slot = entry % n_cand
        t = row % L
        kk = (row // L) % K
        bb = row // (L * K)
        q_ptrs = (q_ptr + bb[:, None] * stride_qb + kk[:, None] * stride_qk
                  + t[:, None] * stride_qt + offs_d[None, :] * stride_qd)
        q = tl.load(q_ptrs, mask=e_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        s = tl.sum(q * key[None, :], axis=1) * scale
        lse = tl.load(lse_ptr + row, mask=e_mask, other=0.0)
        g = tl.load(grad_ptr + row, mask=e_mask, other=0.0) * scale
        w = g * (tl.exp(s - lse) - (slot == 0).to(tl.float32))
        acc += tl.where(e_mask, w, 0.0)[:, None] * q
    dk = tl.sum(acc, axis=0)
    tl.store(dk_ptr + b * stride_dkb + frame * stride_dkt + offs_d * stride_dkd,
             dk.to(dk_ptr.dtype.element_ty), mask=d_mask)
