"""Plain-PyTorch InfoNCE: the reference backend, and the naive form it replaces.

The same maths as the fused kernels in ``cpc_fast.kernels`` (diff them side by side):

    s_j  = <q, c_j> / τ,   c_0 = keys[pos], c_j = keys[neg_j] (j = 1..N)
    loss = logsumexp_j(s_j) - s_0
    correct = s_0 > max_{j >= 1} s_j        (strictly; a negative that IS the positive ties)

Every score and logsumexp is computed in float32 (float64 when an input is float64), with
autocast disabled, whatever the input dtype.

Memory: :func:`cpc_info_nce_rows_reference` works one prediction step k at a time and scores
each step's rows against all L frames of their own sequence with one (T x D)(D x L) matmul,
then gathers the N + 1 scores it needs. Its peak is one (B, T, L) score block per step, far
below 1/K of the naive dense gather (:func:`cpc_info_nce_naive`, which materialises a
(B, K, L, N + 1, D) candidate tensor: 2.5 GB in float32 at the paper's shape). Very long
sequences fall back to gathering the candidates per step, so the cost never grows as L².
"""

from __future__ import annotations

import torch

# Rows per chunk are chosen so one chunk's scores or candidates stay near this many elements.
_CHUNK_ELEMENTS = 1 << 23
# Scoring against all L frames costs ~2·L·D flops per row instead of gathering N + 1 keys;
# above this ratio of L to N + 1 the gather is cheaper on a CPU.
_DENSE_MAX_RATIO = 40


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: the loss never runs in half."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def info_nce_rows_reference(
    queries: torch.Tensor,
    keys: torch.Tensor,
    pos_index: torch.Tensor,
    neg_index: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row InfoNCE over gathered candidates, chunked over rows.

    queries (M, D), keys (Nk, D), pos_index (M,), neg_index (M, N) -> loss (M,) in the compute
    dtype and correct (M,) bool.
    """
    M, D = queries.shape
    N = neg_index.shape[1]
    dtype = compute_dtype(queries, keys)
    with torch.autocast(queries.device.type, enabled=False):
        q_all = queries.to(dtype)
        k_all = keys.to(dtype)
        index = torch.cat([pos_index.view(M, 1), neg_index], 1).long()  # (M, N + 1)
        chunk = max(1, _CHUNK_ELEMENTS // ((N + 1) * D))
        losses, correct = [], []
        for start in range(0, M, chunk):
            idx = index[start : start + chunk]
            cand = k_all[idx]  # (m, N + 1, D)
            scores = torch.bmm(cand, q_all[start : start + chunk].unsqueeze(2)).squeeze(2)
            scores = scores / temperature
            loss, ok = _rows_from_scores(scores, idx)
            losses.append(loss)
            correct.append(ok)
    return torch.cat(losses), torch.cat(correct)


def cpc_info_nce_rows_reference(
    predictions: torch.Tensor,
    z: torch.Tensor,
    neg_index: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row CPC InfoNCE, one prediction step at a time.

    predictions (B, K, L, D), z (B, L, D), neg_index (B, K, L, N) frames of the same
    sequence -> loss (B, K, L) in the compute dtype, zero on rows with t + k + 1 >= L, and
    correct (B, K, L) bool, False on those rows.
    """
    B, K, L, D = predictions.shape
    N = neg_index.shape[3]
    dtype = compute_dtype(predictions, z)
    dense = L <= _DENSE_MAX_RATIO * (N + 1)
    with torch.autocast(predictions.device.type, enabled=False):
        zc = z.to(dtype)
        loss_steps, correct_steps = [], []
        for k in range(K):
            T = max(L - k - 1, 0)
            loss_k = predictions.new_zeros((B, L), dtype=dtype)
            correct_k = torch.zeros((B, L), dtype=torch.bool, device=predictions.device)
            if T > 0:
                rows = _cpc_step(
                    predictions[:, k, :T].to(dtype), zc, neg_index[:, k, :T], k, temperature, dense
                )
                loss_k = torch.cat([rows[0], loss_k[:, T:]], 1)
                correct_k = torch.cat([rows[1], correct_k[:, T:]], 1)
            loss_steps.append(loss_k)
            correct_steps.append(correct_k)
    return torch.stack(loss_steps, 1), torch.stack(correct_steps, 1)


def _cpc_step(
    q: torch.Tensor,  # (B, T, D)
    z: torch.Tensor,  # (B, L, D)
    neg: torch.Tensor,  # (B, T, N)
    k: int,
    temperature: float,
    dense: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, D = q.shape
    L = z.shape[1]
    N = neg.shape[2]
    pos = torch.arange(k + 1, k + 1 + T, device=q.device).view(1, T, 1).expand(B, T, 1)
    index = torch.cat([pos, neg.long()], 2)  # (B, T, N + 1), positive first
    per_row = L if dense else (N + 1) * D
    chunk = max(1, _CHUNK_ELEMENTS // (B * per_row))
    losses, correct = [], []
    for start in range(0, T, chunk):
        qc = q[:, start : start + chunk]
        idx = index[:, start : start + chunk]
        if dense:
            # Every frame's score, then the N + 1 that were drawn: two GEMMs beat the gather.
            scores = torch.bmm(qc, z.transpose(1, 2)).gather(2, idx)
        else:
            cand = z[torch.arange(B, device=q.device).view(B, 1, 1), idx]  # (B, t, N + 1, D)
            scores = torch.einsum("btnd,btd->btn", cand, qc)
        loss, ok = _rows_from_scores(scores / temperature, idx)
        losses.append(loss)
        correct.append(ok)
    return torch.cat(losses, 1), torch.cat(correct, 1)


def _rows_from_scores(
    scores: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (..., N + 1) with the positive first -> loss (...), correct (...)."""
    loss = torch.logsumexp(scores, -1) - scores[..., 0]
    with torch.no_grad():
        # A negative drawn at the positive's own index ties with it by definition, whatever
        # rounding the matmul applied to the two copies.
        tied = (index[..., 1:] == index[..., :1]).any(-1)
        correct = (scores[..., 0] > scores[..., 1:].amax(-1)) & ~tied
    return loss, correct


def cpc_info_nce_naive(
    predictions: torch.Tensor,
    z: torch.Tensor,
    neg_index: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The dense gather a user would write: one (B, K, L, N + 1, D) candidate tensor.

    Same loss as the reference (mean over rows with t + k + 1 < L); kept as the baseline the
    benchmark measures against, not used by the library.
    """
    B, K, L, D = predictions.shape
    dtype = compute_dtype(predictions, z)
    t = torch.arange(L, device=z.device)
    steps = torch.arange(1, K + 1, device=z.device)
    pos = (t.view(1, L) + steps.view(K, 1)).clamp(max=L - 1)  # (K, L), clamped rows masked
    index = torch.cat([pos.view(1, K, L, 1).expand(B, K, L, 1), neg_index.long()], 3)
    batch = torch.arange(B, device=z.device).view(B, 1, 1, 1)
    cand = z.to(dtype)[batch, index]  # (B, K, L, N + 1, D)
    scores = (cand * predictions.to(dtype).unsqueeze(3)).sum(-1) / temperature
    loss = torch.logsumexp(scores, -1) - scores[..., 0]  # (B, K, L)
    valid = (t.view(1, L) + steps.view(K, 1)) < L  # (K, L)
    return loss[:, valid].sum() / (B * valid.sum())
