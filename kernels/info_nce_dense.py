"""Design (c): CPC InfoNCE as dense (L x D)(D x L) tiles per (b, k), weighted by draw counts.

Every negative of row (b, k, t) is a frame of sequence b, so the row's N + 1 scores are a
subset, with multiplicity, of the L scores S[t, :] = <q_t, z_b[:]> / τ. With
w[t, f] = #{j : neg_j(t) = f} + [f = t + k + 1] the loss is

    loss_t = log Σ_f w[t, f] exp(S[t, f]) - S[t, t + k + 1]

and dS[t, f] = g_t (w[t, f] exp(S[t, f] - lse_t) - [f = pos_t]) gives dq = dS z and
dz = dSᵀ q as plain tensor-core GEMMs (dS / g_t is the operand, so fp16 never holds a
subnormal ~1e-7 value). Nothing is gathered and nothing is atomic: dq is
owned by the program of its row block, dz by the program of its frame block and split
(which loops over its steps k and every row block; the splits' partial sums are added in
a fixed order), so the result is bitwise reproducible. The price is scoring all
L frames instead of N + 1 (~L / (N + 1) ≈ 20x the FLOPs) and rebuilding the count tile from
the row's indices (N compares per score) in each of the three passes.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .indexing import bk_base, row_ptrs, store_row_outputs
from .sampling import load_seed, negatives4

# Kernels are laid out by hand (argument groups per line), as in the Triton tutorials.
# fmt: off

# Finite "minus infinity" for running maxima: a tile with no drawn frame must not give inf-inf.
_NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def _count_tile(neg_row, stride_nn, row_mask, row, pos, offs_f, N, n_groups, n_frames, seed,
                SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_F: tl.constexpr):
    """(BLOCK_M, BLOCK_F) int32: how often each row drew each frame of the tile, and (rows,)
    True where a given index lies outside [0, n_frames). Such an index matches no frame, so
    it would silently drop out of the loss: forward makes its row NaN instead."""
    cnt = tl.zeros((BLOCK_M, BLOCK_F), tl.int32)
    bad = row < 0
    f = offs_f[None, :]
    for g in range(0, n_groups):
        i0, i1, i2, i3, a0, a1, a2, a3, bad_g = negatives4(neg_row, stride_nn, row_mask, g, N,
                                                           seed, row, n_groups, n_frames, pos,
                                                           SAMPLED, EXCLUDE_POS)
        bad = bad | bad_g
        cnt += ((i0[:, None] == f) & a0[:, None]).to(tl.int32)
        cnt += ((i1[:, None] == f) & a1[:, None]).to(tl.int32)
        cnt += ((i2[:, None] == f) & a2[:, None]).to(tl.int32)
        cnt += ((i3[:, None] == f) & a3[:, None]).to(tl.int32)
    return cnt, bad


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, F32_DOT: tl.constexpr):
    """a @ b with fp32 accumulation; IEEE for fp32 operands (no TF32 rounding). F32_DOT
    multiplies already-rounded half operands in fp32: Triton's interpreter computes bf16
    tl.dot wrongly, and the result is the same as the tensor-core product up to summation
    order."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    elif F32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _load_tile(base, rows, stride_row, n_rows, offs_d, stride_d, D):
    """(rows, BLOCK_D) in the input dtype; rows >= n_rows and columns >= D read as 0."""
    ptrs = (base + rows.to(tl.int64)[:, None] * stride_row
            + offs_d.to(tl.int64)[None, :] * stride_d)  # int64: see gather's _load_rows
    return tl.load(ptrs, mask=(rows < n_rows)[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def _row_tile(q_ptr, z_ptr, neg_ptr, K, L, D, stride_qb, stride_qk, stride_qt, stride_qd,
              stride_zb, stride_nb, stride_nk, stride_nt, BLOCK_M: tl.constexpr,
              BLOCK_D: tl.constexpr):
    """A row-block program's rows (b, k, t), their positives and ids, and its query tile."""
    pid_t = tl.program_id(0)
    k = tl.program_id(1)
    b = tl.program_id(2)
    offs_t = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = offs_t < L - k - 1
    row = (b * K + k) * L + offs_t
    neg_row = row_ptrs(neg_ptr, b, k, offs_t, stride_nb, stride_nk, stride_nt)
    q = _load_tile(bk_base(q_ptr, b, k, stride_qb, stride_qk), offs_t, stride_qt,
                   L - k - 1, offs_d, stride_qd, D)
    return b, k, offs_t, offs_d, row_mask, offs_t + k + 1, row, neg_row, q, bk_base(
        z_ptr, b, 0, stride_zb, 0)


@triton.jit
def _dense_fwd_kernel(
    q_ptr, z_ptr, neg_ptr, seed_ptr,
    lse_ptr, loss_ptr, correct_ptr,  # (B, K, L) contiguous
    K, L, D, N, n_groups, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_zb, stride_zt, stride_zd,
    stride_nb, stride_nk, stride_nt, stride_nn,
    SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr, IEEE: tl.constexpr, F32_DOT: tl.constexpr,
    ON_TIE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, k, offs_t, offs_d, row_mask, pos, row, neg_row, q, z_base = _row_tile(
        q_ptr, z_ptr, neg_ptr, K, L, D, stride_qb, stride_qk, stride_qt, stride_qd, stride_zb,
        stride_nb, stride_nk, stride_nt, BLOCK_M, BLOCK_D)
    seed = load_seed(seed_ptr, SAMPLED)
    bad = offs_t < 0

    m = tl.full((BLOCK_M,), _NEG_BIG, tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    s_pos = tl.zeros((BLOCK_M,), tl.float32)
    neg_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    tied = offs_t < 0
    for f0 in range(0, L, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        z = _load_tile(z_base, offs_f, stride_zt, L, offs_d, stride_zd, D)
        s = _dot(q, tl.trans(z), IEEE, F32_DOT) * scale
        cnt, bad_f = _count_tile(neg_row, stride_nn, row_mask, row, pos, offs_f, N, n_groups, L,
                                 seed, SAMPLED, EXCLUDE_POS, BLOCK_M, BLOCK_F)
        bad = bad | bad_f
        is_pos = offs_f[None, :] == pos[:, None]
        w = cnt.to(tl.float32) + is_pos.to(tl.float32)
        s_pos += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
        # The positive's own frame drawn as a negative ties (``tied``), outside the max.
        neg_max = tl.maximum(neg_max, tl.max(tl.where((cnt > 0) & ~is_pos, s, float("-inf")),
                                             axis=1))
        tied = tied | (tl.sum((is_pos & (cnt > 0)).to(tl.int32), axis=1) > 0)
        m_new = tl.maximum(m, tl.max(tl.where(w > 0, s, _NEG_BIG), axis=1))
        # Exponentiate only drawn frames: undrawn ones may sit far above the running max.
        p = w * tl.exp(tl.where(w > 0, s - m_new[:, None], _NEG_BIG))
        l = l * tl.exp(m - m_new) + tl.sum(p, axis=1)
        m = m_new

    # Rows past the end have no candidates; a bad index's NaN lse gives NaN gradients.
    store_row_outputs(lse_ptr, loss_ptr, correct_ptr, row, offs_t < L, row_mask,
                      m + tl.log(tl.where(row_mask, l, 1.0)), s_pos, neg_max, tied, bad, ON_TIE)


@triton.jit
def _dprobs(q, z, offs_f, pos, cnt, lse, scale, IEEE: tl.constexpr, F32_DOT: tl.constexpr):
    """dS / g = w exp(S - lse) - [f = pos], in [-1, 1].

    The row's upstream gradient g (about 1 / rows, ~1e-5 at the paper's shape) is applied
    outside: dS itself would be ~1e-7, subnormal in fp16, and it is rounded to the input
    dtype for the tensor-core product."""
    s = _dot(q, tl.trans(z), IEEE, F32_DOT) * scale
    is_pos = (offs_f[None, :] == pos[:, None]).to(tl.float32)
    w = cnt.to(tl.float32) + is_pos
    p = w * tl.exp(tl.where(w > 0, s - lse[:, None], _NEG_BIG))
    return p - is_pos


@triton.jit
def _dense_bwd_dq_kernel(
    q_ptr, z_ptr, neg_ptr, seed_ptr, lse_ptr, grad_ptr, dq_ptr,
    K, L, D, N, n_groups, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_zb, stride_zt, stride_zd,
    stride_nb, stride_nk, stride_nt, stride_nn,
    stride_dqb, stride_dqk, stride_dqt, stride_dqd,
    SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr, IEEE: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (row block, k, b): dq = dS z over all frame blocks."""
    b, k, offs_t, offs_d, row_mask, pos, row, neg_row, q, z_base = _row_tile(
        q_ptr, z_ptr, neg_ptr, K, L, D, stride_qb, stride_qk, stride_qt, stride_qd, stride_zb,
        stride_nb, stride_nk, stride_nt, BLOCK_M, BLOCK_D)
    seed = load_seed(seed_ptr, SAMPLED)
    g = tl.load(grad_ptr + row, mask=row_mask, other=0.0) * scale
    lse = tl.load(lse_ptr + row, mask=row_mask, other=0.0)

    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for f0 in range(0, L, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        z = _load_tile(z_base, offs_f, stride_zt, L, offs_d, stride_zd, D)
        cnt, _ = _count_tile(neg_row, stride_nn, row_mask, row, pos, offs_f, N, n_groups, L, seed,
                             SAMPLED, EXCLUDE_POS, BLOCK_M, BLOCK_F)
        dp = _dprobs(q, z, offs_f, pos, cnt, lse, scale, IEEE, F32_DOT)
        dq += _dot(dp.to(z.dtype), z, IEEE, F32_DOT)
    dq = dq * g[:, None]  # g is per row: factored out of the sum over frames exactly

    dq_ptrs = (bk_base(dq_ptr, b, k, stride_dqb, stride_dqk)
               + offs_t.to(tl.int64)[:, None] * stride_dqt
               + offs_d.to(tl.int64)[None, :] * stride_dqd)
    tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty),
             mask=(offs_t < L)[:, None] & (offs_d < D)[None, :])


@triton.jit
def _dense_bwd_dz_kernel(
    q_ptr, z_ptr, neg_ptr, seed_ptr, lse_ptr, grad_ptr,
    dz_ptr, stride_dzs, stride_dzb, stride_dzt, stride_dzd,  # (splits, B, L, D), written once
    k_per_split,
    K, L, D, N, n_groups, scale,
    stride_qb, stride_qk, stride_qt, stride_qd,
    stride_zb, stride_zt, stride_zd,
    stride_nb, stride_nk, stride_nt, stride_nn,
    SAMPLED: tl.constexpr, EXCLUDE_POS: tl.constexpr, IEEE: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (frame block, b, split): the split's share Σ_k Σ_row-blocks dSᵀ q
    of dz over steps k in [split · k_per_split, (split + 1) · k_per_split), in a fixed
    order. The launcher sums the splits' partial dz in split order: deterministic, and
    the paper's shape launches more than 4 programs per SM instead of 2."""
    pid_f = tl.program_id(0)
    b = tl.program_id(1)
    split = tl.program_id(2)
    seed = load_seed(seed_ptr, SAMPLED)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    offs_d = tl.arange(0, BLOCK_D)
    z = _load_tile(bk_base(z_ptr, b, 0, stride_zb, 0), offs_f, stride_zt, L, offs_d, stride_zd, D)
    dz = tl.zeros((BLOCK_F, BLOCK_D), tl.float32)
    for k in range(split * k_per_split, tl.minimum(K, (split + 1) * k_per_split)):
        q_base = bk_base(q_ptr, b, k, stride_qb, stride_qk)
        for t0 in range(0, L - k - 1, BLOCK_M):
            offs_t = t0 + tl.arange(0, BLOCK_M)
            row_mask = offs_t < L - k - 1
            pos = offs_t + k + 1
            row = (b * K + k) * L + offs_t
            neg_row = row_ptrs(neg_ptr, b, k, offs_t, stride_nb, stride_nk, stride_nt)
            q = _load_tile(q_base, offs_t, stride_qt, L - k - 1, offs_d, stride_qd, D)
            g = tl.load(grad_ptr + row, mask=row_mask, other=0.0) * scale
            lse = tl.load(lse_ptr + row, mask=row_mask, other=0.0)
            cnt, _ = _count_tile(neg_row, stride_nn, row_mask, row, pos, offs_f, N, n_groups, L,
                                 seed, SAMPLED, EXCLUDE_POS, BLOCK_M, BLOCK_F)
            # The sum runs over rows with different g: scale the tile by its largest |g| so
            # the rounded operand stays in [-1, 1], and multiply the fp32 product back.
            g_max = tl.max(tl.abs(g), axis=0)
            g_max = tl.where(g_max > 0, g_max, 1.0)
            dp = _dprobs(q, z, offs_f, pos, cnt, lse, scale, IEEE, F32_DOT) * (g / g_max)[:, None]
            dz += _dot(tl.trans(dp.to(q.dtype)), q, IEEE, F32_DOT) * g_max

    dz_ptrs = (bk_base(dz_ptr, split, b, stride_dzs, stride_dzb)
               + offs_f.to(tl.int64)[:, None] * stride_dzt
               + offs_d.to(tl.int64)[None, :] * stride_dzd)
    tl.store(dz_ptrs, dz.to(dz_ptr.dtype.element_ty),
             mask=(offs_f < L)[:, None] & (offs_d < D)[None, :])
