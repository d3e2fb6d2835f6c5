"""Launchers for the InfoNCE kernels: shapes, strides, block sizes and grids, nothing else.

Rows are always a (B, K, L) grid: the CPC form uses it as is (queries (B, K, L, D) strided,
keys (B, L, D)); the general form is the grid (1, 1, M) over keys (1, Nk, D). Per-row outputs
(lse, loss, correct) are contiguous (B, K, L) tensors; gradients of per-row losses come in
as the same shape. Callers (``cpc_fast.losses``) validate shapes and dtypes. Indices outside
the keys are never dereferenced: the kernels read row 0 instead and give the row a NaN loss
(and NaN gradients), so skipping the caller's range check can never read out of bounds.

Every launch runs under ``torch.cuda.device(tensor.device)``: Triton launches on the current
device, and a tensor on cuda:1 launched from cuda:0 would be an illegal memory access.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch
import triton

from .info_nce_dense import _dense_bwd_dq_kernel, _dense_bwd_dz_kernel, _dense_fwd_kernel
from .info_nce_gather import _dk_segment_kernel, _info_nce_bwd_kernel, _info_nce_fwd_kernel
from .sampling import _materialize_negatives_kernel

MAX_DIM = 2048  # widest D the gather kernels hold in registers
# Per-row outputs and Philox counters are addressed by an int32 row id (b * K + k) * L + t.
MAX_ROWS = 2**31 - 1


class GatherConfig(NamedTuple):
    BLOCK_M: int
    BLOCK_D: int
    num_warps: int
    num_stages: int


class DenseConfig(NamedTuple):
    BLOCK_M: int
    BLOCK_F: int
    BLOCK_D: int
    num_warps: int
    num_stages: int


def block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def gather_config(D: int) -> GatherConfig:
    """2048 elements of the (BLOCK_M, BLOCK_D) row tile per 8 warps: 8 per thread, which
    keeps q, the gathered keys, dq and the 64-bit gather addresses in registers without
    spills on sm_90 (``python -m cpc_fast.kernels.aot`` prints the counts). The candidate
    loop is a chain of dependent gathers, so software pipelining (num_stages > 1) buys
    nothing."""
    bd = block_d(D)
    return GatherConfig(min(64, max(2, 2048 // bd)), bd, 8 if bd >= 64 else 4, 1)


def segment_config(D: int) -> GatherConfig:
    bd = block_d(D)
    return GatherConfig(min(64, max(2, 1024 // bd)), bd, 4, 1)


def dense_config(D: int) -> DenseConfig:
    """64 x 32 score tiles, 8 warps: no spills at D = 128 in fp32, bf16 or fp16."""
    bd = block_d(D)
    return DenseConfig(64 if bd <= 128 else 32, 32, bd, 8, 2)


# Programs per SM the dense dz pass aims for: one resident program per SM cannot hide the
# latency of its serial loop over steps and row blocks.
DZ_PROGRAMS_PER_SM = 4
H100_SMS = 132  # the SM count assumed where no GPU says its own (the interpreter, AOT)


def dz_splits(L: int, B: int, K: int, sms: int, block_f: int = 32) -> int:
    """Into how many groups of steps k the dense dz pass splits (``_dense_bwd_dz_kernel``'s
    third grid axis), so that it launches at least DZ_PROGRAMS_PER_SM programs per SM:
    ceil(L / block_f) · B frame blocks alone give 256 at the paper's shape, 2 per SM of an
    H100. At most K splits (one step each)."""
    blocks = triton.cdiv(L, block_f) * B
    return max(1, min(K, triton.cdiv(DZ_PROGRAMS_PER_SM * sms, blocks)))


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H100_SMS


def n_groups(N: int) -> int:
    """Philox counters per row: each yields four draws."""
    return (N + 3) // 4


class Candidates(NamedTuple):
    """Where a row's candidates come from.

    pos: (1, 1, M) explicit positives (IGNORE_INDEX drops the row), or None for CPC: frame
        t + k + 1 of the row's sequence, rows with t + k + 1 >= seq_len left out.
    neg: (B, K, L, N) explicit key rows (any strides: a stride 0 over K shares them between
        steps), or None to draw them in-kernel from seed (frames of the row's own sequence).
    seed: the Philox key as a 1-element int64 tensor on the queries' device (read by the
        kernels on the device: see ``sampling.load_seed``), or None with explicit ``neg``.
    seq_len: CPC frames per sequence; 0 means keys.shape[1].
    batch_keys: CPC keys are the whole batch's frames (1, B * seq_len, D): positives are
        offset by b * seq_len and negatives index the whole batch.
    """

    pos: torch.Tensor | None
    neg: torch.Tensor | None
    N: int
    seed: torch.Tensor | None
    exclude_positive: bool
    seq_len: int = 0
    batch_keys: bool = False


class Scoring(NamedTuple):
    """How candidates are scored (gather designs): dot or cosine similarity; which negatives
    equal to the positive get -inf ("none", "index", "value"); whether a tie is correct."""

    cosine: bool = False
    mask: str = "none"
    correct_on_tie: bool = False


PLAIN = Scoring()  # dot product, nothing masked, strict correctness: CPC's
MASKS = {"none": 0, "index": 1, "value": 2}
IGNORE_INDEX = -100  # the kernels' IGNORE (indexing.py): PyTorch's ignore_index


def _pos_stride(c: Candidates) -> int:
    return c.pos.stride(2) if c.pos is not None else 0


def _neg_strides(c: Candidates) -> tuple[int, int, int, int]:
    return tuple(c.neg.stride()) if c.neg is not None else (0, 0, 0, 0)


def _batch_strides(x: torch.Tensor, B: int) -> tuple[int, ...]:
    """Strides of keys (or their gradient) (Bk, Lk, D); one key set shared by B > 1 sequences
    (batch keys) is read with batch stride 0."""
    return (x.stride(0) if x.shape[0] == B else 0, *x.stride()[1:])


def interpreted() -> bool:
    """Whether Triton's interpreter runs the kernels (on CPU tensors): TRITON_INTERPRET."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def _dummy(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(1, dtype=torch.int64, device=like.device)


def _or_dummy(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """An optional pointer argument: the kernels read it only under the constexpr that says
    it is there."""
    return t if t is not None else _dummy(like)


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Makes t's GPU the current device for the launch (Triton launches on the current one)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _row_outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row forward outputs for q (B, K, L, D): lse and loss fp32, correct int8, (B, K, L)."""
    B, K, L, _ = q.shape
    lse = torch.empty((B, K, L), dtype=torch.float32, device=q.device)
    return lse, torch.empty_like(lse), torch.empty((B, K, L), dtype=torch.int8, device=q.device)


def _seq_len(cand: Candidates, keys: torch.Tensor) -> int:
    return cand.seq_len or keys.shape[1]


def _gather_launch(q, keys, cand: Candidates, scale: float, scoring: Scoring):
    """The gather kernels' shared arguments: (index tensors, sizes and strides, constants)."""
    B, K, L, D = q.shape
    seq_len = _seq_len(cand, keys)
    indices = (_or_dummy(cand.pos, q), _or_dummy(cand.neg, q), _or_dummy(cand.seed, q))
    sizes = (
        K, L, D, cand.N, n_groups(cand.N), keys.shape[1], seq_len,
        seq_len if cand.batch_keys else 0, scale,
        *q.stride(), *_batch_strides(keys, B), _pos_stride(cand), *_neg_strides(cand),
    )  # fmt: skip
    cfg = gather_config(D)
    meta = dict(
        CPC=cand.pos is None, SAMPLED=cand.neg is None, EXCLUDE_POS=cand.exclude_positive,
        COSINE=scoring.cosine, MASK=MASKS[scoring.mask], BLOCK_M=cfg.BLOCK_M,
        BLOCK_D=cfg.BLOCK_D, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return indices, sizes, meta, (triton.cdiv(L, cfg.BLOCK_M), K, B)


def gather_forward(
    q: torch.Tensor,  # (B, K, L, D) any strides
    keys: torch.Tensor,  # (B, Lk, D), or (1, Lk, D) shared by all sequences; any strides
    cand: Candidates,
    scale: float,
    scoring: Scoring = PLAIN,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Designs (a)/(b) forward -> (loss (B, K, L) fp32, correct (B, K, L) bool, lse fp32)."""
    lse, loss, correct = _row_outputs(q)
    indices, sizes, meta, grid = _gather_launch(q, keys, cand, scale, scoring)
    with _on_device(q):
        _info_nce_fwd_kernel[grid](q, keys, *indices, lse, loss, correct, *sizes,
                                   ON_TIE=scoring.correct_on_tie, **meta)  # fmt: skip
    return loss, correct.bool(), lse


def gather_backward(
    q: torch.Tensor,
    keys: torch.Tensor,
    cand: Candidates,
    scale: float,
    lse: torch.Tensor,  # (B, K, L) fp32
    grad: torch.Tensor,  # (B, K, L) fp32 contiguous: d total / d loss_row
    deterministic: bool,
    need_dk: bool = True,
    scoring: Scoring = PLAIN,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Designs (a)/(b) backward -> (dq like q, dk like keys in keys' dtype, or None when
    ``need_dk`` is False: then neither atomics nor the segment pass run)."""
    dq = torch.empty_like(q)  # keeps q's strides when they are dense (the permuted CPC view)
    atomic = need_dk and not deterministic
    if atomic:
        dk = torch.zeros(keys.shape, dtype=torch.float32, device=keys.device)
    else:
        dk = torch.empty(keys.shape if need_dk else (1, 1, 1), dtype=keys.dtype,
                         device=keys.device)  # fmt: skip
    indices, sizes, meta, grid = _gather_launch(q, keys, cand, scale, scoring)
    with _on_device(q):
        _info_nce_bwd_kernel[grid](
            q, keys, *indices, lse, grad, dq, dk, *sizes, *dq.stride(),
            *_batch_strides(dk, q.shape[0]), ATOMIC=atomic, **meta,
        )  # fmt: skip
        if not need_dk:
            return dq, None
        if atomic:
            return dq, dk.to(keys.dtype)
        _segment_dk(q, keys, cand, scale, scoring, lse, grad, dk)
    return dq, dk


def _segment_dk(q, keys, cand, scale, scoring, lse, grad, dk) -> None:
    """Deterministic d_keys: group every (row, candidate) by key row with a stable sort."""
    B, K, L, D = q.shape
    Bk, Lk = keys.shape[:2]
    index = candidate_keys(cand, B, K, L, q.device, _seq_len(cand, keys))  # (B, K, L, N + 1)
    flat = index
    if Bk > 1:  # one key set per sequence
        flat = index + torch.arange(B, device=q.device).view(B, 1, 1, 1) * Lk
    # Entries with no key row park after the last one, outside every segment: rows with no
    # positive (CPC rows past the end, ignored rows) and indices out of range (their rows'
    # lse is NaN already).
    parked = (index < 0) | (index >= Lk) | ~_rows_with_positive(cand, B, K, L, keys)
    flat = torch.where(parked, Bk * Lk, flat)
    flat = flat.view(-1).to(torch.int32)  # Bk * Lk + 1 < 2**31: half the sort's key bytes
    sorted_flat, order = torch.sort(flat, stable=True)
    # Segment starts by binary search: unlike bincount, no device sync for the output size.
    bounds = torch.arange(Bk * Lk + 1, dtype=torch.int32, device=q.device)
    seg = torch.searchsorted(sorted_flat, bounds)  # (Bk * Lk + 1,) int64
    seq_len = _seq_len(cand, keys)
    cfg = segment_config(D)
    _dk_segment_kernel[(Bk * Lk,)](
        q, keys, cand.pos if cand.pos is not None else _dummy(q), lse, grad, order, seg, dk,
        K, L, D, Lk, cand.N + 1, seq_len if cand.batch_keys else 0, scale,
        *q.stride(), *keys.stride(), _pos_stride(cand), *dk.stride(),
        CPC=cand.pos is None, COSINE=scoring.cosine, MASK=MASKS[scoring.mask],
        BLOCK_E=cfg.BLOCK_M, BLOCK_D=cfg.BLOCK_D, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip


def _rows_with_positive(cand: Candidates, B, K, L, keys) -> torch.Tensor:
    """(B, K, L, 1) bool: the rows that count (CPC: t + k + 1 < seq_len; else not ignored)."""
    if cand.pos is not None:
        return (cand.pos != IGNORE_INDEX).view(B, K, L, 1)
    t = torch.arange(L, device=keys.device).view(1, 1, L, 1)
    k = torch.arange(K, device=keys.device).view(1, K, 1, 1)
    return t + k + 1 < _seq_len(cand, keys)


def candidate_keys(
    cand: Candidates, B: int, K: int, L: int, device, seq_len: int | None = None
) -> torch.Tensor:
    """(B, K, L, N + 1) int64 key rows, positive first: within the row's sequence, or of the
    whole batch with ``cand.batch_keys``. ``seq_len`` (CPC): frames per sequence, default L."""
    seq_len = seq_len or cand.seq_len or L
    if cand.pos is None:
        t = torch.arange(L, device=device).view(1, 1, L, 1)
        k = torch.arange(K, device=device).view(1, K, 1, 1)
        pos = (t + k + 1).expand(B, K, L, 1)
        if cand.batch_keys:
            pos = pos + torch.arange(B, device=device).view(B, 1, 1, 1) * seq_len
    else:
        pos = cand.pos.long().view(B, K, L, 1)
    if cand.neg is None:
        neg = materialize_negatives(
            cand.seed, B, K, L, cand.N, device, cand.exclude_positive, n_frames=seq_len
        )
    else:
        neg = cand.neg.long().expand(B, K, L, cand.N)
    return torch.cat([pos, neg], 3)


def _dense_launch(q, z, cand: Candidates, scale: float):
    """The dense kernels' shared arguments: ((negatives, seed), sizes and strides, constants,
    cfg)."""
    B, K, L, D = q.shape
    cfg = dense_config(D)
    sizes = (K, L, D, cand.N, n_groups(cand.N), scale,
             *q.stride(), *z.stride(), *_neg_strides(cand))  # fmt: skip
    meta = dict(
        SAMPLED=cand.neg is None, EXCLUDE_POS=cand.exclude_positive,
        IEEE=q.dtype == torch.float32, F32_DOT=interpreted(), BLOCK_M=cfg.BLOCK_M,
        BLOCK_F=cfg.BLOCK_F, BLOCK_D=cfg.BLOCK_D, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    return (_or_dummy(cand.neg, q), _or_dummy(cand.seed, q)), sizes, meta, cfg


def dense_forward(
    q: torch.Tensor,  # (B, K, L, D)
    z: torch.Tensor,  # (B, L, D), same dtype as q
    cand: Candidates,
    scale: float,
    correct_on_tie: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Design (c) forward (CPC only) -> (loss, correct, lse), each (B, K, L)."""
    B, K, L, _ = q.shape
    lse, loss, correct = _row_outputs(q)
    ptrs, sizes, meta, cfg = _dense_launch(q, z, cand, scale)
    with _on_device(q):
        _dense_fwd_kernel[(triton.cdiv(L, cfg.BLOCK_M), K, B)](
            q, z, *ptrs, lse, loss, correct, *sizes, ON_TIE=correct_on_tie, **meta
        )
    return loss, correct.bool(), lse


def dense_backward(
    q: torch.Tensor,
    z: torch.Tensor,
    cand: Candidates,
    scale: float,
    lse: torch.Tensor,
    grad: torch.Tensor,
    need_dq: bool = True,
    need_dz: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Design (c) backward -> (dq like q, dz (B, L, D)), each None when not needed (its
    kernel is skipped); deterministic by construction. The dz pass runs in ``dz_splits``
    groups of steps, each writing an fp32 partial dz (4 MB per split at the paper's
    shape), summed in split order."""
    B, K, L, _ = q.shape
    dq = torch.empty_like(q) if need_dq else None
    ptrs, sizes, meta, cfg = _dense_launch(q, z, cand, scale)
    splits = dz_splits(L, B, K, _sm_count(q.device), cfg.BLOCK_F)
    if need_dz and splits > 1:
        partial = torch.empty((splits, *z.shape), dtype=torch.float32, device=z.device)
    elif need_dz:
        partial = torch.empty((1, *z.shape), dtype=z.dtype, device=z.device)
    with _on_device(q):
        if need_dq:
            _dense_bwd_dq_kernel[(triton.cdiv(L, cfg.BLOCK_M), K, B)](
                q, z, *ptrs, lse, grad, dq, *sizes, *dq.stride(), **meta
            )
        if need_dz:
            _dense_bwd_dz_kernel[(triton.cdiv(L, cfg.BLOCK_F), B, splits)](
                q, z, *ptrs, lse, grad, partial, *partial.stride(), triton.cdiv(K, splits),
                *sizes, **meta,
            )  # fmt: skip
    if not need_dz:
        return dq, None
    # A plain reduction over the split axis (no atomics): the same sum in every run.
    return dq, partial[0] if splits == 1 else partial.sum(0).to(z.dtype)


def materialize_negatives(
    seed: int | torch.Tensor,
    B: int,
    K: int,
    L: int,
    N: int,
    device: torch.device,
    exclude_positive: bool,
    n_frames: int | None = None,
) -> torch.Tensor:
    """The (B, K, L, N) int64 frames the SAMPLED kernels draw for ``seed`` (a Philox key, or
    a 1-element int64 tensor holding one) (L rows per step, from sequences of ``n_frames``
    frames, default L)."""
    out = torch.empty((B, K, L, N), dtype=torch.int64, device=device)
    if not isinstance(seed, torch.Tensor):
        seed = torch.full((), seed, dtype=torch.int64, device=device)  # a fill: no copy
    block = 64
    with _on_device(out):
        _materialize_negatives_kernel[(triton.cdiv(L, block), K, B)](
            out, seed, K, L, N, n_groups(N), n_frames or L, EXCLUDE_POS=exclude_positive,
            BLOCK_M=block,
        )  # fmt: skip
    return out
