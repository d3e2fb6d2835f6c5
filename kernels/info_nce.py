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

from .indexing import IGNORE
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


class Options(NamedTuple):
    """Everything a launch needs besides its tensors, packed once by the loss
    (``cpc_fast.losses``) and handed through the custom ops unchanged (flat in their schema).

    The tensors beside it: pos (1, 1, M) explicit positives (IGNORE_INDEX drops the row), or
    None for CPC: frame t + k + 1 of the row's sequence, rows with t + k + 1 >= seq_len left
    out; neg (B, K, L, N) explicit key rows (any strides: a stride 0 over K shares them
    between steps), or None to draw them in-kernel from seed (frames of the row's own
    sequence); seed the Philox key as a 1-element int64 tensor on the queries' device (read
    by the kernels on the device: see ``sampling.load_seed``), or None with explicit neg.
    """

    N: int  # negatives per row
    scale: float  # 1 / temperature
    exclude_positive: bool = False  # in-kernel draws skip the positive
    seq_len: int = 0  # CPC frames per sequence (0: keys.shape[1])
    batch_keys: bool = False  # CPC keys are the whole batch's frames (1, B * seq_len, D)
    cosine: bool = False  # cosine similarity instead of the dot product (gather designs)
    mask: str = "none"  # negatives equal to the positive get -inf: "index" or "value"
    correct_on_tie: bool = False  # a tie with the positive counts as correct
    design: str = "gather"  # given or Philox negatives; or "dense"
    deterministic: bool = False  # d_keys without atomics (gather designs)
    check_indices: bool = True  # the caller's range check (the kernels never read past)


MASKS = {"none": 0, "index": 1, "value": 2}
IGNORE_INDEX = IGNORE.value  # PyTorch's ignore_index, as the kernels test it


def _pos_stride(pos: torch.Tensor | None) -> int:
    return pos.stride(2) if pos is not None else 0


def _neg_strides(neg: torch.Tensor | None) -> tuple[int, int, int, int]:
    return tuple(neg.stride()) if neg is not None else (0, 0, 0, 0)


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


def _seq_len(o: Options, keys: torch.Tensor) -> int:
    return o.seq_len or keys.shape[1]


def _gather_launch(q, keys, pos, neg, seed, o: Options):
    """The gather kernels' shared arguments: (index tensors, sizes and strides, constants)."""
    B, K, L, D = q.shape
    seq_len = _seq_len(o, keys)
    indices = (_or_dummy(pos, q), _or_dummy(neg, q), _or_dummy(seed, q))
    sizes = (
        K, L, D, o.N, n_groups(o.N), keys.shape[1], seq_len, seq_len if o.batch_keys else 0,
        o.scale, *q.stride(), *_batch_strides(keys, B), _pos_stride(pos), *_neg_strides(neg),
    )  # fmt: skip
    cfg = gather_config(D)
    meta = dict(
        CPC=pos is None, SAMPLED=neg is None, EXCLUDE_POS=o.exclude_positive, COSINE=o.cosine,
        MASK=MASKS[o.mask], BLOCK_M=cfg.BLOCK_M, BLOCK_D=cfg.BLOCK_D, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    return indices, sizes, meta, (triton.cdiv(L, cfg.BLOCK_M), K, B)


def gather_forward(
    q: torch.Tensor,  # (B, K, L, D) any strides
    keys: torch.Tensor,  # (B, Lk, D), or (1, Lk, D) shared by all sequences; any strides
    pos: torch.Tensor | None,  # (1, 1, M) or None (CPC): see Options
    neg: torch.Tensor | None,  # (B, K, L, N) or None (Philox draws)
    seed: torch.Tensor | None,  # (1,) int64 on q's device, with neg None
    o: Options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Designs (a)/(b) forward -> (loss (B, K, L) fp32, correct (B, K, L) bool, lse fp32)."""
    lse, loss, correct = _row_outputs(q)
    indices, sizes, meta, grid = _gather_launch(q, keys, pos, neg, seed, o)
    with _on_device(q):
        _info_nce_fwd_kernel[grid](q, keys, *indices, lse, loss, correct, *sizes,
                                   ON_TIE=o.correct_on_tie, **meta)  # fmt: skip
    return loss, correct.bool(), lse


def gather_backward(
    grad: torch.Tensor,  # (B, K, L) fp32 contiguous: d total / d loss_row
    q: torch.Tensor,
    keys: torch.Tensor,
    pos: torch.Tensor | None,
    neg: torch.Tensor | None,
    seed: torch.Tensor | None,
    lse: torch.Tensor,  # (B, K, L) fp32
    o: Options,
    need_dk: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Designs (a)/(b) backward -> (dq like q, dk like keys in keys' dtype, or None when
    ``need_dk`` is False: then neither atomics nor the segment pass run)."""
    dq = torch.empty_like(q)  # keeps q's strides when they are dense (the permuted CPC view)
    atomic = need_dk and not o.deterministic
    if atomic:
        dk = torch.zeros(keys.shape, dtype=torch.float32, device=keys.device)
    else:
        dk = torch.empty(keys.shape if need_dk else (1, 1, 1), dtype=keys.dtype,
                         device=keys.device)  # fmt: skip
    indices, sizes, meta, grid = _gather_launch(q, keys, pos, neg, seed, o)
    with _on_device(q):
        _info_nce_bwd_kernel[grid](
            q, keys, *indices, lse, grad, dq, dk, *sizes, *dq.stride(),
            *_batch_strides(dk, q.shape[0]), ATOMIC=atomic, **meta,
        )  # fmt: skip
        if not need_dk:
            return dq, None
        if atomic:
            return dq, dk.to(keys.dtype)
        _segment_dk(q, keys, pos, neg, seed, o, lse, grad, dk)
    return dq, dk


def _segment_dk(q, keys, pos, neg, seed, o: Options, lse, grad, dk) -> None:
    """Deterministic d_keys: group every (row, candidate) by key row with a stable sort."""
    B, K, L, D = q.shape
    Bk, Lk = keys.shape[:2]
    index = candidate_keys(pos, neg, seed, o, B, K, L, q.device, _seq_len(o, keys))
    # index: (B, K, L, N + 1)
    flat = index
    if Bk > 1:  # one key set per sequence
        flat = index + torch.arange(B, device=q.device).view(B, 1, 1, 1) * Lk
    # Entries with no key row park after the last one, outside every segment: rows with no
    # positive (CPC rows past the end, ignored rows) and indices out of range (their rows'
    # lse is NaN already).
    parked = (index < 0) | (index >= Lk) | ~_rows_with_positive(pos, o, B, K, L, keys)
    flat = torch.where(parked, Bk * Lk, flat)
    flat = flat.view(-1).to(torch.int32)  # Bk * Lk + 1 < 2**31: half the sort's key bytes
    sorted_flat, order = torch.sort(flat, stable=True)
    # Segment starts by binary search: unlike bincount, no device sync for the output size.
    bounds = torch.arange(Bk * Lk + 1, dtype=torch.int32, device=q.device)
    seg = torch.searchsorted(sorted_flat, bounds)  # (Bk * Lk + 1,) int64
    seq_len = _seq_len(o, keys)
    cfg = segment_config(D)
    _dk_segment_kernel[(Bk * Lk,)](
        q, keys, _or_dummy(pos, q), lse, grad, order, seg, dk,
        K, L, D, Lk, o.N + 1, seq_len if o.batch_keys else 0, o.scale,
        *q.stride(), *keys.stride(), _pos_stride(pos), *dk.stride(),
        CPC=pos is None, COSINE=o.cosine, MASK=MASKS[o.mask],
        BLOCK_E=cfg.BLOCK_M, BLOCK_D=cfg.BLOCK_D, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip


def _rows_with_positive(pos, o: Options, B, K, L, keys) -> torch.Tensor:
    """(B, K, L, 1) bool: the rows that count (CPC: t + k + 1 < seq_len; else not ignored)."""
    if pos is not None:
        return (pos != IGNORE_INDEX).view(B, K, L, 1)
    t = torch.arange(L, device=keys.device).view(1, 1, L, 1)
    k = torch.arange(K, device=keys.device).view(1, K, 1, 1)
    return t + k + 1 < _seq_len(o, keys)


def candidate_keys(
    pos, neg, seed, o: Options, B: int, K: int, L: int, device, seq_len: int | None = None
) -> torch.Tensor:
    """(B, K, L, N + 1) int64 key rows, positive first: within the row's sequence, or of the
    whole batch with ``o.batch_keys``. ``seq_len`` (CPC): frames per sequence, default L."""
    seq_len = seq_len or o.seq_len or L
    if pos is None:
        t = torch.arange(L, device=device).view(1, 1, L, 1)
        k = torch.arange(K, device=device).view(1, K, 1, 1)
        first = (t + k + 1).expand(B, K, L, 1)
        if o.batch_keys:
            first = first + torch.arange(B, device=device).view(B, 1, 1, 1) * seq_len
    else:
        first = pos.long().view(B, K, L, 1)
    if neg is None:
        neg = materialize_negatives(
            seed, B, K, L, o.N, device, o.exclude_positive, n_frames=seq_len
        )
    else:
        neg = neg.long().expand(B, K, L, o.N)
    return torch.cat([first, neg], 3)


def _dense_launch(q, z, neg, seed, o: Options):
    """The dense kernels' shared arguments: ((negatives, seed), sizes and strides, constants,
    cfg)."""
    B, K, L, D = q.shape
    cfg = dense_config(D)
    sizes = (K, L, D, o.N, n_groups(o.N), o.scale,
             *q.stride(), *z.stride(), *_neg_strides(neg))  # fmt: skip
    meta = dict(
        SAMPLED=neg is None, EXCLUDE_POS=o.exclude_positive,
        IEEE=q.dtype == torch.float32, F32_DOT=interpreted(), BLOCK_M=cfg.BLOCK_M,
        BLOCK_F=cfg.BLOCK_F, BLOCK_D=cfg.BLOCK_D, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    return (_or_dummy(neg, q), _or_dummy(seed, q)), sizes, meta, cfg


def dense_forward(
    q: torch.Tensor,  # (B, K, L, D)
    z: torch.Tensor,  # (B, L, D), same dtype as q
    neg: torch.Tensor | None,  # (B, K, L, N) or None (Philox draws)
    seed: torch.Tensor | None,  # (1,) int64 on q's device, with neg None
    o: Options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Design (c) forward (CPC only) -> (loss, correct, lse), each (B, K, L)."""
    B, K, L, _ = q.shape
    lse, loss, correct = _row_outputs(q)
    ptrs, sizes, meta, cfg = _dense_launch(q, z, neg, seed, o)
    with _on_device(q):
        _dense_fwd_kernel[(triton.cdiv(L, cfg.BLOCK_M), K, B)](
            q, z, *ptrs, lse, loss, correct, *sizes, ON_TIE=o.correct_on_tie, **meta
        )
    return loss, correct.bool(), lse


def dense_backward(
    grad: torch.Tensor,  # (B, K, L) fp32 contiguous
    q: torch.Tensor,
    z: torch.Tensor,
    neg: torch.Tensor | None,
    seed: torch.Tensor | None,
    lse: torch.Tensor,
    o: Options,
    need_dq: bool = True,
    need_dz: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Design (c) backward -> (dq like q, dz (B, L, D)), each None when not needed (its
    kernel is skipped); deterministic by construction. The dz pass runs in ``dz_splits``
    groups of steps, each writing an fp32 partial dz (4 MB per split at the paper's
    shape), summed in split order."""
    B, K, L, _ = q.shape
    dq = torch.empty_like(q) if need_dq else None
    ptrs, sizes, meta, cfg = _dense_launch(q, z, neg, seed, o)
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
