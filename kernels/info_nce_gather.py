"""Designs (a) and (b): gather-based InfoNCE, one program per block of BLOCK_M rows.

Rows form a (B, K, L) grid addressed through strides, so the CPC predictions tensor (a
permuted, non-contiguous view) is read in place; the general ``info_nce`` form is the grid
(1, 1, M). Each program keeps its query rows in registers and walks the N + 1 candidates,
gathering one key row per query row per step, so no (rows, N + 1, D) tensor ever exists.

- CPC: the positive of row (b, k, t) is frame t + k + 1 of sequence b (plus ``pos_b`` · b when
  the keys are the whole batch's frames) and rows with t + k + 1 >= seq_len are skipped;
  otherwise positives come from ``pos_ptr`` (IGNORE drops a row) and all rows count.
- SAMPLED (design (b)): negatives are regenerated from the seed at ``seed_ptr`` (see
  ``sampling.py``) instead of read from ``neg_ptr``.
- COSINE: s = <q, c> / (max(|q|, eps) · max(|c|, eps)) · scale, torch's cosine_similarity,
  with the norms computed from the rows in registers (nothing normalised is stored).
- MASK: a negative equal to the row's positive by index (1) or in all D components (2) gets
  the score -inf: it leaves the logsumexp and the max, and has zero gradient.
- ON_TIE: ``correct`` is s_pos >= every kept negative (a tie counts, CPC_audio's argmax)
  instead of strictly above with no kept negative at the positive's own index.

Forward stores per row only lse, loss and correctness. Backward recomputes the scores and
either adds d_keys with fp32 atomics (ATOMIC, fast, run-to-run order-dependent rounding) or
leaves d_keys to ``_dk_segment_kernel``, which owns one key row per program and sums its
contributions in a fixed order (deterministic).

Cosine gradients follow torch's: the clamp of a norm below eps changes the value, not the
derivative of the norm, so with u = x / |x| (0 at x = 0), d cos / d q = (ĉ - cos · u_q) /
max(|q|, eps) and likewise for c. Backward accumulates A = Σ w_j ĉ_j and S = Σ w_j cos_j and
forms dq = (A - S · u_q) / max(|q|, eps) at the end.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .indexing import bk_base, checked_positive, row_ptrs, store_row_outputs
from .sampling import load_seed, negatives4

# Kernels are laid out by hand (argument groups per line), as in the Triton tutorials.
# fmt: off

_EPS = tl.constexpr(1e-8)  # torch.nn.functional.cosine_similarity's default eps


@triton.jit
def _load_rows(base, rows, stride_row, offs_d, stride_d, mask):
    # Both offsets in int64: a column-major tensor has stride_d = rows, and offs_d * stride_d
    # passes 2**31 once rows * D does.
    ptrs = (base + rows.to(tl.int64)[:, None] * stride_row
            + offs_d.to(tl.int64)[None, :] * stride_d)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _norms(x, COSINE: tl.constexpr, BLOCK_M: tl.constexpr):
    """(rows,) 1 / max(|x|, eps) and 1 / |x| (0 at x = 0) for cosine scores; ones for dot."""
    if COSINE:
        n = tl.sqrt(tl.sum(x * x, axis=1))
        return 1.0 / tl.maximum(n, _EPS), tl.where(n > 0, 1.0 / tl.where(n > 0, n, 1.0), 0.0)
    else:
        one = tl.full((BLOCK_M,), 1.0, tl.float32)
        return one, one


@triton.jit
def _score(q, rq, key_base, idx, stride_kt, offs_d, stride_kd, mask, scale,
           COSINE: tl.constexpr, BLOCK_M: tl.constexpr):
    """Scores of one candidate per row: (s = sim * scale, sim, the gathered (rows, D) key
    tile, its 1 / max(|c|, eps) and 1 / |c|)."""
    c = _load_rows(key_base, idx, stride_kt, offs_d, stride_kd, mask)
    rc, uc = _norms(c, COSINE, BLOCK_M)
    sim = tl.sum(q * c, axis=1) * rq * rc
    return sim * scale, sim, c, rc, uc


@triton.jit
def _masked(idx, pos, c, c_pos, MASK: tl.constexpr):
    """(rows,) True where the negative equals the positive: by index (1) or value (2)."""
    if MASK == 1:
        return idx == pos
    elif MASK == 2:
        return tl.sum((c != c_pos).to(tl.int32), axis=1) == 0
    else:
        return idx != idx


@triton.jit
def _row_block(L, K, seq_len, CPC: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's rows: b, k, offs_t (rows,), the rows that have a positive, row ids."""
    pid_t = tl.program_id(0)
    k = tl.program_id(1)
    b = tl.program_id(2)
    offs_t = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    n_rows = tl.minimum(L, seq_len - k - 1) if CPC else L
    row = (b * K + k) * L + offs_t  # < 2**31 (launcher): per-row outputs and Philox counters
    return b, k, offs_t, offs_t < n_rows, row


@triton.jit
def _positives(pos_ptr, b, offs_t, k, stride_pt, row_mask, n_frames, pos_b, CPC: tl.constexpr):
    """(rows,) int32 key rows of the positives, a flag for a given one out of range, and
    the rows that count (ignored ones drop out)."""
    if CPC:
        return b * pos_b + offs_t + k + 1, offs_t < 0, row_mask
    pos, bad, ignored = checked_positive(pos_ptr + offs_t.to(tl.int64) * stride_pt, row_mask,
                                         n_frames)
    return pos, bad, row_mask & ~ignored


@triton.jit
def _rows(q_ptr, key_ptr, pos_ptr, neg_ptr, K, L, D, n_frames, seq_len, pos_b, stride_qb,
          stride_qk, stride_qt, stride_qd, stride_kb, stride_pt, stride_nb, stride_nk, stride_nt,
          CPC: tl.constexpr, COSINE: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_D: tl.constexpr):
    """A program's rows and what both passes first derive from them: b, k, offs_t, offs_d,
    row ids, the rows that count and their (rows, D) mask, the sequence's keys, the rows'
    negatives, their positives (and which are out of range), the queries, and the queries'
    1 / max(|q|, eps) and 1 / |q|."""
    b, k, offs_t, row_mask, row = _row_block(L, K, seq_len, CPC, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    pos, bad, row_mask = _positives(pos_ptr, b, offs_t, k, stride_pt, row_mask, n_frames, pos_b,
                                    CPC)
    mask = row_mask[:, None] & (offs_d < D)[None, :]
    q = _load_rows(bk_base(q_ptr, b, k, stride_qb, stride_qk), offs_t, stride_qt, offs_d,
                   stride_qd, mask)
    rq, uq = _norms(q, COSINE, BLOCK_M)
    key_base = bk_base(key_ptr, b, 0, stride_kb, 0)
    neg_row = row_ptrs(neg_ptr, b, k, offs_t, stride_nb, stride_nk, stride_nt)
    return b, k, offs_t, offs_d, row, row_mask, mask, key_base, neg_row, pos, bad, q, rq, uq


@triton.jit
def _fold(s, idx, keep, pos, m, l, neg_max, tied):
    """Folds one negative score per row into the running (max, sum) logsumexp state."""
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m, s)
    l = l * tl.exp(m - m_new) + tl.exp(s - m_new)
    # A kept negative drawn at the positive's own index ties with it exactly: it is counted
    # by ``tied``, not by the max the positive is compared with.
    same = idx == pos
    tied = tied | (same & keep)
    return m_new, l, tl.maximum(neg_max, tl.where(same, float("-inf"), s)), tied


@triton.jit
def _grad_step(q, rq, c, rc, uc, sim, w, idx, mask, dq, S, dk_base, stride_dkt, offs_d,
               stride_dkd, COSINE: tl.constexpr, ATOMIC: tl.constexpr):
    """Adds candidate c's weight w = d loss / d s (times 1/τ) to A = dq (and S), and with
    ATOMIC its own gradient to its key row."""
    dq = dq + (w * rc)[:, None] * c
    if COSINE:
        S = S + w * sim
    if ATOMIC:
        if COSINE:
            v = (rc * rq)[:, None] * q - (rc * sim * uc)[:, None] * c
        else:
            v = q
        ptrs = (dk_base + idx.to(tl.int64)[:, None] * stride_dkt
                + offs_d.to(tl.int64)[None, :] * stride_dkd)
        tl.atomic_add(ptrs, w[:, None] * v, mask=mask, sem="relaxed")
    return dq, S


@triton.jit
def _visit(q, rq, key_base, idx, active, pos, c_pos, stride_kt, offs_d, stride_kd, mask, scale,
           lse, g, dk_base, stride_dkt, stride_dkd, s0, s1, s2, s3, COSINE: tl.constexpr,
           MASK: tl.constexpr, BACKWARD: tl.constexpr, ATOMIC: tl.constexpr,
           BLOCK_M: tl.constexpr):
    """One negative per row. Forward: folded into (s0, s1, s2, s3) = (running max, sum, max
    negative, tied); backward: its softmax weight added to (s0, s1) = (A, S), and with
    ATOMIC its gradient to its key row."""
    mask = mask & active[:, None]
    s, sim, c, rc, uc = _score(q, rq, key_base, idx, stride_kt, offs_d, stride_kd, mask, scale,
                               COSINE, BLOCK_M)
    keep = active & ~_masked(idx, pos, c, c_pos, MASK)
    if BACKWARD:
        w = tl.where(keep, g * tl.exp(s - lse), 0.0)
        s0, s1 = _grad_step(q, rq, c, rc, uc, sim, w, idx, mask & keep[:, None], s0, s1,
                            dk_base, stride_dkt, offs_d, stride_dkd, COSINE, ATOMIC)
    else:
        s0, s1, s2, s3 = _fold(s, idx, keep, pos, s0, s1, s2, s3)
    return s0, s1, s2, s3


@triton.jit
def _pick(u: tl.constexpr, x0, x1, x2, x3):
    if u == 0:
        return x0
    elif u == 1:
        return x1
    elif u == 2:
        return x2
    else:
        return x3


@triton.jit
def _walk_negatives(q, rq, key_base, neg_row, stride_nn, row_mask, row, pos, c_pos, N, n_groups,
                    n_frames, seed, stride_kt, offs_d, stride_kd, mask, scale, lse, g, dk_base,
                    stride_dkt, stride_dkd, s0, s1, s2, s3, SAMPLED: tl.constexpr,
                    EXCLUDE_POS: tl.constexpr, COSINE: tl.constexpr, MASK: tl.constexpr,
                    BACKWARD: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr):
    """Both passes' walk over each row's N negatives, each through ``_visit``: four per step
    (``negatives4``, unrolled), so four independent gathers are in flight. Returns the state
    and the rows that hold an index outside the keys."""
    bad = row < 0
    for gi in range(0, n_groups):
        i0, i1, i2, i3, a0, a1, a2, a3, bad_g = negatives4(neg_row, stride_nn, row_mask, gi, N,
                                                           seed, row, n_groups, n_frames, pos,
                                                           SAMPLED, EXCLUDE_POS)
        bad = bad | bad_g
        for u in tl.static_range(4):
            s0, s1, s2, s3 = _visit(q, rq, key_base, _pick(u, i0, i1, i2, i3),
                                    _pick(u, a0, a1, a2, a3), pos, c_pos, stride_kt, offs_d,
                                    stride_kd, mask, scale, lse, g, dk_base, stride_dkt,
                                    stride_dkd, s0, s1, s2, s3, COSINE, MASK, BACKWARD, ATOMIC,
                                    BLOCK_M)
    return s0, s1, s2, s3, bad


@triton.jit
def _info_nce_fwd_kernel(
    q_ptr, key_ptr, pos_ptr, neg_ptr, seed_ptr,
    lse_ptr, loss_ptr, correct_ptr,  # (B, K, L) contiguous outputs
    K, L, D, N, n_groups, n_frames, seq_len, pos_b, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_kb, stride_kt, stride_kd,
    stride_pt,
    stride_nb, stride_nk, stride_nt, stride_nn,
    CPC: tl.constexpr, SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr,
    COSINE: tl.constexpr, MASK: tl.constexpr, ON_TIE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, k, offs_t, offs_d, row, row_mask, mask, key_base, neg_row, pos, bad, q, rq, _ = _rows(
        q_ptr, key_ptr, pos_ptr, neg_ptr, K, L, D, n_frames, seq_len, pos_b, stride_qb, stride_qk,
        stride_qt, stride_qd, stride_kb, stride_pt, stride_nb, stride_nk, stride_nt, CPC, COSINE,
        BLOCK_M, BLOCK_D)
    s_pos, _, c_pos, _, _ = _score(q, rq, key_base, pos, stride_kt, offs_d, stride_kd, mask,
                                   scale, COSINE, BLOCK_M)
    seed = load_seed(seed_ptr, SAMPLED)

    # State: running max (from the positive), sum, max negative, tied; no lse/gradients yet.
    m, l, neg_max, tied, bad_neg = _walk_negatives(
        q, rq, key_base, neg_row, stride_nn, row_mask, row, pos, c_pos, N, n_groups, n_frames,
        seed, stride_kt, offs_d, stride_kd, mask, scale, s_pos, s_pos, key_base, 0, 0, s_pos,
        tl.full((BLOCK_M,), 1.0, tl.float32), tl.full((BLOCK_M,), float("-inf"), tl.float32),
        offs_t < 0, SAMPLED, EXCLUDE_POS, COSINE, MASK, False, False, BLOCK_M)
    # A row holding an index outside the keys gets NaN (and NaN gradients): loud, never a
    # read past the tensor. Backward recomputes nothing for it but NaN from this lse.
    store_row_outputs(lse_ptr, loss_ptr, correct_ptr, row, offs_t < L, row_mask, m + tl.log(l),
                      s_pos, neg_max, tied, bad | bad_neg, ON_TIE)


@triton.jit
def _info_nce_bwd_kernel(
    q_ptr, key_ptr, pos_ptr, neg_ptr, seed_ptr, lse_ptr, grad_ptr,
    dq_ptr, dk_ptr,  # dq strided like q; dk (B, Lk, D) fp32, used only with ATOMIC
    K, L, D, N, n_groups, n_frames, seq_len, pos_b, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_kb, stride_kt, stride_kd,
    stride_pt,
    stride_nb, stride_nk, stride_nt, stride_nn,
    stride_dqb, stride_dqk, stride_dqt, stride_dqd,
    stride_dkb, stride_dkt, stride_dkd,
    CPC: tl.constexpr, SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr, COSINE: tl.constexpr,
    MASK: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Out-of-range indices read row 0; forward stored NaN as their row's lse.
    b, k, offs_t, offs_d, row, row_mask, mask, key_base, neg_row, pos, _, q, rq, uq = _rows(
        q_ptr, key_ptr, pos_ptr, neg_ptr, K, L, D, n_frames, seq_len, pos_b, stride_qb, stride_qk,
        stride_qt, stride_qd, stride_kb, stride_pt, stride_nb, stride_nk, stride_nt, CPC, COSINE,
        BLOCK_M, BLOCK_D)
    dk_base = bk_base(dk_ptr, b, 0, stride_dkb, 0)
    # d loss_row / d s_j = g (p_j - [j = 0]); the 1/τ of s_j = sim_j/τ is folded into g.
    g = tl.load(grad_ptr + row, mask=row_mask, other=0.0) * scale
    lse = tl.load(lse_ptr + row, mask=row_mask, other=0.0)

    s_pos, sim, c_pos, rc, uc = _score(q, rq, key_base, pos, stride_kt, offs_d, stride_kd, mask,
                                       scale, COSINE, BLOCK_M)
    seed = load_seed(seed_ptr, SAMPLED)
    dq, S = _grad_step(q, rq, c_pos, rc, uc, sim, g * (tl.exp(s_pos - lse) - 1.0), pos, mask,
                       tl.zeros((BLOCK_M, BLOCK_D), tl.float32),
                       tl.zeros((BLOCK_M,), tl.float32), dk_base, stride_dkt, offs_d,
                       stride_dkd, COSINE, ATOMIC)
    # State: A = dq and S (cosine); the last two slots are unused.
    dq, S, _, _, _ = _walk_negatives(
        q, rq, key_base, neg_row, stride_nn, row_mask, row, pos, c_pos, N, n_groups, n_frames,
        seed, stride_kt, offs_d, stride_kd, mask, scale, lse, g, dk_base, stride_dkt,
        stride_dkd, dq, S, lse, lse, SAMPLED, EXCLUDE_POS, COSINE, MASK, True, ATOMIC, BLOCK_M)
    if COSINE:
        dq = rq[:, None] * dq - (rq * S * uq)[:, None] * q

    # Rows past the valid range get an exact zero gradient (the grid covers all L rows).
    dq_ptrs = (bk_base(dq_ptr, b, k, stride_dqb, stride_dqk)
               + offs_t.to(tl.int64)[:, None] * stride_dqt
               + offs_d.to(tl.int64)[None, :] * stride_dqd)
    out_mask = (offs_t < L)[:, None] & (offs_d < D)[None, :]
    tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _entry_positive(pos_ptr, stride_pt, bb, kk, t, e_mask, pos_b, Lk, CPC: tl.constexpr):
    """(entries,) key row of each entry's row's positive (ignored rows never reach here).
    A given positive outside [0, Lk) reads as row 0, as in the other kernels: the entries
    of its row are not parked (their negatives may be valid key rows), and their weight is
    NaN already through the row's NaN lse."""
    if CPC:
        return bb * pos_b + t + kk + 1
    pos, _, _ = checked_positive(pos_ptr + t * stride_pt, e_mask, Lk)
    return pos


@triton.jit
def _dk_segment_kernel(
    q_ptr, key_ptr, pos_ptr, lse_ptr, grad_ptr,
    order_ptr,  # (entries,) flat candidate ids (row * (N + 1) + slot), grouped by key row
    seg_ptr,  # (Bk * Lk + 1,) start of each key row's entries in order_ptr
    dk_ptr,  # (Bk, Lk, D) strided like keys' gradient
    K, L, D, Lk, n_cand, pos_b, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_kb, stride_kt, stride_kd,
    stride_pt,
    stride_dkb, stride_dkt, stride_dkd,
    CPC: tl.constexpr, COSINE: tl.constexpr, MASK: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Deterministic d_keys: one key row per program, its entries summed in a fixed order."""
    f = tl.program_id(0).to(tl.int64)  # frame * stride_kt passes 2**31 for 10**7 keys of D=256
    b = f // Lk
    frame = f % Lk
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    key_base = key_ptr + b * stride_kb
    key = tl.load(key_base + frame * stride_kt + offs_d.to(tl.int64) * stride_kd, mask=d_mask,
                  other=0.0).to(tl.float32)
    rk, uk = _norms(key[None, :], COSINE, 1)
    start = tl.load(seg_ptr + f)
    end = tl.load(seg_ptr + f + 1)
    acc = tl.zeros((BLOCK_E, BLOCK_D), tl.float32)
    S = tl.zeros((BLOCK_E,), tl.float32)
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
                  + t[:, None] * stride_qt + offs_d.to(tl.int64)[None, :] * stride_qd)
        q_mask = e_mask[:, None] & d_mask[None, :]
        q = tl.load(q_ptrs, mask=q_mask, other=0.0).to(tl.float32)
        rq, _ = _norms(q, COSINE, BLOCK_E)
        sim = tl.sum(q * key[None, :], axis=1) * rq * rk
        lse = tl.load(lse_ptr + row, mask=e_mask, other=0.0)
        g = tl.load(grad_ptr + row, mask=e_mask, other=0.0) * scale
        w = g * (tl.exp(sim * scale - lse) - (slot == 0).to(tl.float32))
        if MASK != 0:
            pos = _entry_positive(pos_ptr, stride_pt, bb, kk, t, e_mask, pos_b, Lk, CPC)
            c_pos = _load_rows(key_base, pos, stride_kt, offs_d, stride_kd, q_mask)
            same = _masked(pos, frame, c_pos, key[None, :], MASK)
            w = tl.where(same & (slot > 0), 0.0, w)
        w = tl.where(e_mask, w, 0.0)
        acc += (w * rq)[:, None] * q
        S += w * sim
    dk = tl.sum(acc, axis=0)
    if COSINE:
        dk = rk * dk - rk * tl.sum(S, axis=0) * uk * key
    tl.store(dk_ptr + b * stride_dkb + frame * stride_dkt + offs_d.to(tl.int64) * stride_dkd,
             dk.to(dk_ptr.dtype.element_ty), mask=d_mask)
