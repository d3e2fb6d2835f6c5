"""Plain-PyTorch InfoNCE: the reference backend.

The same maths as the fused kernels in ``cpc_fast.kernels`` (diff them side by side):

    s_j  = sim(q, c_j) / τ,   c_0 = keys[pos], c_j = keys[neg_j] (j = 1..N)
    sim  = <q, c>, or <q, c> / (max(|q|, eps) max(|c|, eps)) (cosine, eps = 1e-8, torch's)
    s_j  = -inf for a negative masked as equal to the positive (by index or by value)
    loss = logsumexp_j(s_j) - s_0
    correct = s_0 > max_{j >= 1} s_j and no kept negative equals the positive (a tie),
              or s_0 >= every kept negative that is not a tie (``correct_on_tie``)

A row whose positive is ``IGNORE_INDEX`` (-100, PyTorch's ``ignore_index``) has loss 0, is
not correct and gets no gradient. Every score and logsumexp is computed in float32 (float64
when an input is float64), with autocast disabled, whatever the input dtype.

The general form is the custom op ``cpc_fast::reference_info_nce`` (a fake implementation
and an autograd formula, so ``torch.compile`` traces it without a graph break). Its
backward recomputes the scores in plain differentiable PyTorch, so second-order gradients
work. The CPC form (:func:`cpc_info_nce_rows_reference`) is plain autograd, but for
negatives shared by the K steps (CPC_audio's): those go to the custom op
``cpc_fast::shared_negatives_info_nce``, built the same way.

Memory: :func:`cpc_info_nce_rows_reference` works one prediction step k at a time and scores
each step's rows against all L frames of their own sequence with one (T x D)(D x L) matmul,
then gathers the N + 1 scores it needs. Its peak is one (B, T, L) score block per step, far
below 1/K of the naive dense gather (``bench/naive_info_nce.py``, which materialises a
(B, K, L, N + 1, D) candidate tensor: 2.5 GB in float32 at the paper's shape). Very long
sequences (or negatives from the whole batch) fall back to gathering the candidates per
step, so the cost never grows as L². Negatives shared by the steps are gathered once per
frame instead of once per step, with the K steps' positives, and scored by one (K, D) x
(D, K + N) product per frame: at CPC_audio's 10-s windows (B=8, L=1000, D=256, N=128,
K=12) that gathers K + N = 140 rows per frame instead of K (N + 1) = 1,548, a (frames,
K + N, D) chunk of 2 MiB at a time.
"""

from __future__ import annotations

from typing import NamedTuple, get_type_hints

import torch
from torch import Tensor

from cpc_fast.losses.negatives import IGNORE_INDEX, check_candidate_ranges

# Rows per chunk are chosen so one chunk's scores or candidates stay near this many elements.
_CHUNK_ELEMENTS = 1 << 23
# Scoring against all L frames costs ~2·L·D flops per row instead of gathering N + 1 keys;
# above this ratio of L to N + 1 the gather is cheaper on a CPU.
_DENSE_MAX_RATIO = 40
# Negatives shared by the K steps are scored one frame at a time (K + N candidates gathered
# once) when the frames a row could score densely outnumber them this many times; below,
# scoring all frames per step is faster (batched small products run at ~40 % of a GEMM's rate).
_SHARED_MIN_RATIO = 3
# The shared form's chunks: (frames, K + N, D) candidates of this many elements (2 MiB in
# float32), read back from the cache by the product that follows the gather (measured on a
# 2-core CPU: 2 and 4 MiB fastest at 1 and 2 threads, 8 MiB 10-30 % slower).
_SHARED_CHUNK_ELEMENTS = 1 << 19
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default


class ReferenceOptions(NamedTuple):
    """How the general reference scores its candidates: everything but the tensors."""

    scale: float  # 1 / temperature
    cosine: bool
    mask: str  # "none", "index" or "value"
    correct_on_tie: bool


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: the loss never runs in half."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def normalise(x: Tensor) -> Tensor:
    """x / max(|x|, eps) over the last dim: cosine_similarity's normalisation (value only)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(COSINE_EPS)


def _normalise_vjp(x: Tensor, v: Tensor) -> Tensor:
    """v pulled back through :func:`normalise` as torch differentiates cosine_similarity:
    the eps clamp changes the value, not the derivative of the norm (u = x / |x|, 0 at 0)."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    u = x / torch.where(n > 0, n, 1)
    y = x / n.clamp_min(COSINE_EPS)
    return (v - (y * v).sum(-1, keepdim=True) * u) / n.clamp_min(COSINE_EPS)


def _chunk_rows(index: Tensor, D: int) -> int:
    """Rows per chunk so that one chunk's (rows, N + 1, D) candidates stay near the limit."""
    return max(1, _CHUNK_ELEMENTS // (index.shape[1] * D))


def _candidate_index(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """(M, N + 1) int64 key rows, positive first (ignored rows point at row 0), and the
    (M,) rows that count."""
    valid = pos != IGNORE_INDEX
    return torch.cat([torch.where(valid, pos, 0).view(-1, 1), neg], 1).long(), valid


def _equal_to_positive(keys: Tensor, idx: Tensor) -> Tensor:
    """(m, N) True where a negative equals its row's positive in all D components."""
    return (keys[idx[:, 1:]] == keys[idx[:, :1]]).all(-1)


def _scores(q: Tensor, cand: Tensor, scale: float, masked: Tensor | None) -> Tensor:
    """q (m, D), cand (m, N + 1, D) -> (m, N + 1) scores, masked negatives at -inf."""
    s = torch.bmm(cand, q.unsqueeze(2)).squeeze(2) * scale
    if masked is None:
        return s
    return torch.cat([s[:, :1], s[:, 1:].masked_fill(masked, float("-inf"))], 1)


def _masked(idx: Tensor, equal: Tensor | None, mode: str) -> Tensor | None:
    """(m, N) negatives masked as equal to the positive: by index, by value, or none."""
    return {"index": idx[:, 1:] == idx[:, :1], "value": equal}.get(mode)


def _scored(queries: Tensor, keys: Tensor, cosine: bool) -> tuple[Tensor, Tensor]:
    dtype = compute_dtype(queries, keys)
    q, k = queries.to(dtype), keys.to(dtype)
    return (normalise(q), normalise(k)) if cosine else (q, k)


@torch.library.custom_op(
    "cpc_fast::reference_info_nce",
    mutates_args=(),
    schema=(
        "(Tensor queries, Tensor keys, Tensor pos, Tensor neg, "
        + ", ".join(f"{t.__name__} {n}" for n, t in get_type_hints(ReferenceOptions).items())
        + ") -> (Tensor, Tensor)"
    ),
)
def reference_info_nce(queries, keys, pos, neg, *options):
    """queries (M, D), keys (Nk, D), pos (M,), neg (M, N) -> loss (M,), correct (M,) bool.

    The index range is always checked (no safe path for a bad index here)."""
    o = ReferenceOptions(*options)
    check_candidate_ranges(pos, neg, keys.shape[0])
    M, D = queries.shape
    index, valid = _candidate_index(pos, neg)
    chunk = _chunk_rows(index, D)
    losses, correct = [], []
    with torch.autocast(queries.device.type, enabled=False):
        q, k = _scored(queries, keys, o.cosine)
        for start in range(0, M, chunk):
            idx = index[start : start + chunk]
            equal = _equal_to_positive(keys, idx)
            scores = _scores(q[start : start + chunk], k[idx], o.scale, _masked(idx, equal, o.mask))
            loss, ok = _rows_from_scores(scores, idx, o.correct_on_tie, equal)
            losses.append(loss)
            correct.append(ok)
    loss = torch.cat(losses)
    return torch.where(valid, loss, 0), torch.cat(correct) & valid


@reference_info_nce.register_fake
def _(queries, keys, pos, neg, *options):
    M = queries.shape[0]
    dtype = compute_dtype(queries, keys)
    return queries.new_empty((M,), dtype=dtype), queries.new_empty((M,), dtype=torch.bool)


def _setup_context(ctx, inputs, output) -> None:
    queries, keys, pos, neg, *options = inputs
    ctx.save_for_backward(queries, keys, pos, neg)
    ctx.options = ReferenceOptions(*options)


def _backward(ctx, grad_loss, _grad_correct):
    """Recomputes the scores chunk by chunk in differentiable PyTorch (so a second backward
    works) and forms d loss / d s = g (softmax(s) - [j = 0]) directly."""
    queries, keys, pos, neg = ctx.saved_tensors
    o = ctx.options
    need_dq, need_dk = ctx.needs_input_grad[:2]
    M, D = queries.shape
    index, valid = _candidate_index(pos, neg)
    chunk = _chunk_rows(index, D)
    with torch.autocast(queries.device.type, enabled=False):
        q, k = _scored(queries, keys, o.cosine)
        g = torch.where(valid, grad_loss.to(q.dtype), 0) * o.scale  # (M,)
        dq, dk = [], torch.zeros_like(k)
        for start in range(0, M, chunk):
            idx = index[start : start + chunk]
            cand = k[idx]  # (m, N + 1, D)
            equal = _equal_to_positive(keys, idx) if o.mask == "value" else None
            masked = _masked(idx, equal, o.mask)
            w = g[start : start + chunk, None] * torch.softmax(
                _scores(q[start : start + chunk], cand, o.scale, masked), 1
            )
            w = torch.cat([w[:, :1] - g[start : start + chunk, None], w[:, 1:]], 1)  # (m, N + 1)
            if need_dq:
                dq.append(torch.bmm(w.unsqueeze(1), cand).squeeze(1))
            if need_dk:
                rows = (w.unsqueeze(2) * q[start : start + chunk, None]).flatten(0, 1)
                dk = dk.index_add(0, idx.reshape(-1), rows)
        dq = _pull_back(queries, torch.cat(dq), o.cosine) if need_dq else None
        dk = _pull_back(keys, dk, o.cosine) if need_dk else None
    return dq, dk, None, None, *(None,) * len(o)


def _pull_back(x: Tensor, grad: Tensor, cosine: bool) -> Tensor:
    """The gradient of the (normalised, with ``cosine``) compute-dtype copy -> x's gradient."""
    return (_normalise_vjp(x.to(grad.dtype), grad) if cosine else grad).to(x.dtype)


reference_info_nce.register_autograd(_backward, setup_context=_setup_context)


def info_nce_rows_reference(
    queries: Tensor,
    keys: Tensor,
    pos_index: Tensor,
    neg_index: Tensor,
    temperature: float = 1.0,
    *,
    similarity: str = "dot",
    mask_duplicates: str = "none",
    correct_on_tie: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-row InfoNCE over gathered candidates, chunked over rows.

    queries (M, D), keys (Nk, D), pos_index (M,) (IGNORE_INDEX drops a row), neg_index
    (M, N) -> loss (M,) in the compute dtype and correct (M,) bool.
    """
    options = ReferenceOptions(
        1.0 / temperature, similarity == "cosine", mask_duplicates, correct_on_tie
    )
    return reference_info_nce(queries, keys, pos_index, neg_index, *options)


def _rows_from_scores(
    scores: Tensor, index: Tensor, correct_on_tie: bool, value_tie: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """scores (..., N + 1), positive first, masked negatives at -inf; index (..., N + 1) key
    rows -> loss (...), correct (...). A kept negative at the positive's index (or equal to
    it by value: ``value_tie``) ties with it, whatever rounding the matmul applied."""
    loss = torch.logsumexp(scores, -1) - scores[..., 0]
    with torch.no_grad():
        tie = index[..., 1:] == index[..., :1]
        if value_tie is not None:
            tie = tie | value_tie
        tie = tie & (scores[..., 1:] > float("-inf"))
        others = scores[..., 1:].masked_fill(tie, float("-inf")).amax(-1)
        if correct_on_tie:
            correct = scores[..., 0] >= others
        else:
            correct = (scores[..., 0] > others) & ~tie.any(-1)
    return loss, correct


def _shared_chunk_rows(N: int, D: int) -> int:
    """Frames per chunk of the shared form: one chunk's (rows, N, D) negatives stay near
    ``_SHARED_CHUNK_ELEMENTS`` (small enough to be read back from the cache)."""
    return max(1, _SHARED_CHUNK_ELEMENTS // (N * D))


def _shared_scores(q: Tensor, k: Tensor, index: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """q (r, K, D), k (Nk, D), index (r, K + N) key rows: the K steps' positives, then the N
    negatives they share -> the candidates (r, K + N, D) and the scores (r, K, N + 1),
    positive first. One product scores a positive and its negatives alike, so a negative
    equal to the positive by value scores exactly as it does (a tie, as in the per-step
    form)."""
    K = q.shape[1]
    cand = k.index_select(0, index.reshape(-1)).view(*index.shape, k.shape[1])  # (r, K + N, D)
    s = torch.bmm(q, cand.transpose(1, 2)) * scale  # (r, K, K + N)
    return cand, torch.cat([s[:, :, :K].diagonal(0, 1, 2).unsqueeze(2), s[:, :, K:]], 2)


def _shared_index(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """(R, K + N) int64 key rows, the positives first (ignored ones point at row 0), and the
    (R, K) valid rows."""
    valid = pos != IGNORE_INDEX
    return torch.cat([torch.where(valid, pos, 0), neg], 1).long(), valid


@torch.library.custom_op(
    "cpc_fast::shared_negatives_info_nce",
    mutates_args=(),
    schema="(Tensor queries, Tensor keys, Tensor pos, Tensor neg, float scale, "
    "bool correct_on_tie) -> (Tensor, Tensor)",
)
def shared_negatives_info_nce(queries, keys, pos, neg, scale, correct_on_tie):
    """queries (R, K, D): K queries per frame row (one per step), keys (Nk, D), pos (R, K)
    their positives' key rows (``IGNORE_INDEX``: no row), neg (R, N) key rows shared by the
    K queries of the row -> loss (R, K) in the compute dtype, correct (R, K) bool.

    The rows of :func:`reference_info_nce` with each frame's negatives repeated K times, but
    they are gathered once per frame and scored against its K queries with one
    (K, D) x (D, K + N) product: the gather, the costly part on a CPU, is K times smaller."""
    R, K, D = queries.shape
    N = neg.shape[1]
    index, valid = _shared_index(pos, neg)
    chunk = _shared_chunk_rows(K + N, D)
    losses, correct = [], []
    with torch.autocast(queries.device.type, enabled=False):
        q, k = _scored(queries, keys, cosine=False)
        for start in range(0, R, chunk):
            idx = index[start : start + chunk]
            _, scores = _shared_scores(q[start : start + chunk], k, idx, scale)
            candidates = torch.cat([idx[:, :K, None], idx[:, None, K:].expand(-1, K, N)], 2)
            loss, ok = _rows_from_scores(scores, candidates, correct_on_tie)
            losses.append(loss)
            correct.append(ok)
    loss = torch.cat(losses)
    return torch.where(valid, loss, 0), torch.cat(correct) & valid


@shared_negatives_info_nce.register_fake
def _(queries, keys, pos, neg, scale, correct_on_tie):
    R, K = queries.shape[:2]
    dtype = compute_dtype(queries, keys)
    return queries.new_empty((R, K), dtype=dtype), queries.new_empty((R, K), dtype=torch.bool)


def _shared_setup_context(ctx, inputs, output) -> None:
    queries, keys, pos, neg, scale, _ = inputs
    ctx.save_for_backward(queries, keys, pos, neg)
    ctx.scale = scale


def _shared_backward(ctx, grad_loss, _grad_correct):
    """Recomputes each chunk's scores in differentiable PyTorch (so a second backward works,
    as for the general op): d loss / d s = g (softmax(s) - [j = 0]), pulled back through the
    same (K, D) x (D, K + N) product per frame, and scattered to the keys once."""
    queries, keys, pos, neg = ctx.saved_tensors
    need_dq, need_dk = ctx.needs_input_grad[:2]
    R, K, D = queries.shape
    index, valid = _shared_index(pos, neg)
    chunk = _shared_chunk_rows(index.shape[1], D)
    with torch.autocast(queries.device.type, enabled=False):
        q, k = _scored(queries, keys, cosine=False)
        g = torch.where(valid, grad_loss.to(q.dtype), 0) * ctx.scale  # (R, K)
        # Filled in place, chunk by chunk (autograd records both writes, so a second
        # backward still works): no copy of d keys per chunk, no list of d queries to join.
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
        for start in range(0, R, chunk):
            qc, gc, idx = (x[start : start + chunk] for x in (q, g, index))
            cand, scores = _shared_scores(qc, k, idx, ctx.scale)
            w = gc.unsqueeze(2) * torch.softmax(scores, 2)  # (r, K, N + 1)
            # Back to the product's (r, K, K + N) layout: step k's positive is column k.
            w = torch.cat([torch.diag_embed(w[:, :, 0] - gc), w[:, :, 1:]], 2)
            if need_dq:
                dq[start : start + chunk] = torch.bmm(w, cand)
            if need_dk:
                d_cand = torch.bmm(w.transpose(1, 2), qc)  # (r, K + N, D)
                dk.index_add_(0, idx.reshape(-1), d_cand.reshape(-1, D))
        dq = dq.to(queries.dtype) if need_dq else None
        dk = dk.to(keys.dtype) if need_dk else None
    return dq, dk, None, None, None, None


shared_negatives_info_nce.register_autograd(_shared_backward, setup_context=_shared_setup_context)


def cpc_info_nce_rows_reference(
    predictions: Tensor,
    z: Tensor,
    neg_index: Tensor,
    temperature: float = 1.0,
    *,
    batch_keys: bool = False,
    correct_on_tie: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-row CPC InfoNCE: one prediction step at a time, or, for negatives shared by the
    steps, one frame at a time (:func:`shared_negatives_info_nce`).

    predictions (B, K, T, D) with T <= L, z (B, L, D), neg_index (B, K or 1, T, N) frames of
    the row's own sequence, or with ``batch_keys`` rows of the whole batch's B·L frames ->
    loss (B, K, T) in the compute dtype, zero on rows with t + k + 1 >= L, and correct
    (B, K, T) bool, False on those rows.
    """
    B, K, T, D = predictions.shape
    L = z.shape[1]
    N = neg_index.shape[3]
    key_rows = B * L if batch_keys else L
    if neg_index.shape[1] == 1 and K > 1 and key_rows > _SHARED_MIN_RATIO * (K + N):
        return _shared_rows(predictions, z, neg_index, temperature, batch_keys, correct_on_tie)
    dtype = compute_dtype(predictions, z)
    neg_index = neg_index.expand(B, K, T, neg_index.shape[3])
    with torch.autocast(predictions.device.type, enabled=False):
        keys = z.to(dtype)
        if batch_keys:
            keys = keys.reshape(1, B * L, D)
        dense = keys.shape[1] <= _DENSE_MAX_RATIO * (neg_index.shape[3] + 1)
        loss_steps, correct_steps = [], []
        for k in range(K):
            rows = max(min(T, L - k - 1), 0)
            loss_k = predictions.new_zeros((B, T), dtype=dtype)
            correct_k = torch.zeros((B, T), dtype=torch.bool, device=predictions.device)
            if rows > 0:
                first = k + 1 + (torch.arange(B, device=z.device) * L if batch_keys else 0)
                loss, ok = _cpc_step(
                    predictions[:, k, :rows].to(dtype),
                    keys,
                    neg_index[:, k, :rows],
                    first,
                    temperature,
                    dense,
                    correct_on_tie,
                )
                loss_k = torch.cat([loss, loss_k[:, rows:]], 1)
                correct_k = torch.cat([ok, correct_k[:, rows:]], 1)
            loss_steps.append(loss_k)
            correct_steps.append(correct_k)
    return torch.stack(loss_steps, 1), torch.stack(correct_steps, 1)


def _cpc_step(
    q: Tensor,  # (B, T, D)
    keys: Tensor,  # (B, L, D), or (1, B·L, D) shared by all sequences
    neg: Tensor,  # (B, T, N) key rows
    first: Tensor | int,  # (B,) or scalar: key row of the positive of row t = 0
    temperature: float,
    dense: bool,
    correct_on_tie: bool,
) -> tuple[Tensor, Tensor]:
    B, T, D = q.shape
    Lk = keys.shape[1]
    N = neg.shape[2]
    t = torch.arange(T, device=q.device).view(1, T, 1)
    pos = (torch.as_tensor(first, device=q.device).view(-1, 1, 1) + t).expand(B, T, 1)
    index = torch.cat([pos, neg.long()], 2)  # (B, T, N + 1), positive first
    per_row = Lk if dense else (N + 1) * D
    chunk = max(1, _CHUNK_ELEMENTS // (B * per_row))
    batch = torch.arange(B, device=q.device).view(B, 1, 1) if keys.shape[0] > 1 else 0
    losses, correct = [], []
    for start in range(0, T, chunk):
        qc = q[:, start : start + chunk]
        idx = index[:, start : start + chunk]
        if dense:
            # Every frame's score, then the N + 1 that were drawn: two GEMMs beat the gather.
            scores = torch.matmul(qc, keys.transpose(1, 2)).gather(2, idx)
        else:
            cand = keys[batch, idx]  # (B, t, N + 1, D)
            scores = torch.einsum("btnd,btd->btn", cand, qc)
        loss, ok = _rows_from_scores(scores / temperature, idx, correct_on_tie)
        losses.append(loss)
        correct.append(ok)
    return torch.cat(losses, 1), torch.cat(correct, 1)


def _shared_rows(
    predictions: Tensor,
    z: Tensor,
    neg_index: Tensor,
    temperature: float,
    batch_keys: bool,
    correct_on_tie: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`cpc_info_nce_rows_reference` for negatives shared by the K steps (neg_index
    (B, 1, T, N)): the rows of frame (b, t) go to :func:`shared_negatives_info_nce` together."""
    B, K, T, D = predictions.shape
    L = z.shape[1]
    N = neg_index.shape[3]
    device = predictions.device
    keys = z.reshape(B * L, D)
    first = torch.arange(B, device=device).view(B, 1, 1) * L  # (B, 1, 1) first key row
    neg = neg_index.reshape(B, T, N).long()
    if not batch_keys:
        neg = neg + first  # frames of the row's own sequence -> rows of the batch
    frame = torch.arange(T, device=device).view(1, T, 1) + torch.arange(
        1, K + 1, device=device
    ).view(1, 1, K)  # (1, T, K) the positive's frame t + k + 1
    pos = torch.where(frame < L, first + frame, IGNORE_INDEX)  # (B, T, K)
    queries = predictions.permute(0, 2, 1, 3).reshape(B * T, K, D)  # free in the model's layout
    loss, correct = shared_negatives_info_nce(
        queries,
        keys,
        pos.reshape(B * T, K),
        neg.reshape(B * T, N),
        1.0 / temperature,
        correct_on_tie,
    )
    return loss.view(B, T, K).permute(0, 2, 1), correct.view(B, T, K).permute(0, 2, 1)
