"""The float64 oracle every InfoNCE test compares against, written from the formula alone.

It shares no code with ``cpc_fast.losses`` or ``cpc_fast.kernels``: each row's N + 1 scores
are plain float64 dot products (or ``torch.nn.functional.cosine_similarity``, the definition
the library promises to match), CPC rows are flattened by explicit loops over (b, k, t), and
gradients come from autograd through these lines. A helper module, not a ``test_`` one, so
every test file imports the same oracle (Liger-Kernel's ``test/utils.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100  # PyTorch's ignore_index


def oracle_rows(
    q,
    keys,
    pos,
    neg,
    temperature=1.0,
    *,
    similarity="dot",
    mask_duplicates="none",
    correct_on_tie=False,
):
    """q (M, D), keys (Nk, D), pos (M,) (IGNORE drops a row), neg (M, N) -> float64 loss
    (M,), correct (M,) bool, scores (M, N + 1) with masked negatives at -inf."""
    q64, k64 = q.double(), keys.double()
    pos = pos.long()
    ignored = pos == IGNORE
    idx = torch.cat([torch.where(ignored, 0, pos).view(-1, 1), neg.long()], 1)  # (M, N + 1)
    cand = k64[idx]  # (M, N + 1, D)
    if similarity == "cosine":
        sim = F.cosine_similarity(q64.unsqueeze(1), cand, dim=-1, eps=1e-8)
    else:
        sim = (cand * q64.unsqueeze(1)).sum(-1)
    scores = sim / temperature
    same_index = idx[:, 1:] == idx[:, :1]
    raw = keys.detach()[idx]  # compared in the stored dtype
    same_value = (raw[:, 1:] == raw[:, :1]).all(-1)
    masked = {"none": torch.zeros_like(same_index), "index": same_index, "value": same_value}[
        mask_duplicates
    ]
    scores = torch.cat([scores[:, :1], scores[:, 1:].masked_fill(masked, -math.inf)], 1)
    loss = torch.logsumexp(scores, 1) - scores[:, 0]
    loss = torch.where(ignored, 0.0, loss)
    with torch.no_grad():
        tie = (same_index | same_value) & ~masked  # a kept negative equal to the positive
        others = scores[:, 1:].masked_fill(tie, -math.inf).max(1).values
        if correct_on_tie:
            correct = scores[:, 0] >= others
        else:
            correct = (scores[:, 0] > others) & ~tie.any(1)
    return loss, correct & ~ignored, scores


def cpc_flat(B, K, T, L=None):
    """Valid (b, k, t) triples in row order: t < T and t + k + 1 < L (L defaults to T)."""
    L = T if L is None else L
    return [(b, k, t) for b in range(B) for k in range(K) for t in range(T) if t + k + 1 < L]


def oracle_cpc(
    predictions, z, neg_index, temperature=1.0, *, across_batch=False, correct_on_tie=False
):
    """float64 (loss, loss_per_step, accuracy_per_step, row losses, row correct) for the CPC
    form: predictions (B, K, T, D), z (B, L, D), neg_index (B, K or 1, T, N) frames of the
    row's sequence, or rows of the whole batch with ``across_batch``."""
    B, K, T, D = predictions.shape
    L = z.shape[1]
    rows = cpc_flat(B, K, T, L)
    q = torch.stack([predictions[b, k, t] for b, k, t in rows])
    keys = z.reshape(B * L, D) if z.is_contiguous() else z.contiguous().view(B * L, D)
    pos = torch.tensor([b * L + t + k + 1 for b, k, t in rows])
    shift = (lambda b: 0) if across_batch else (lambda b: b * L)
    neg = torch.stack(
        [neg_index[b, min(k, neg_index.shape[1] - 1), t].long() + shift(b) for b, k, t in rows]
    )
    loss, correct, _ = oracle_rows(q, keys, pos, neg, temperature, correct_on_tie=correct_on_tie)
    step = torch.tensor([k for _, k, _ in rows])
    nan = torch.tensor(math.nan, dtype=torch.float64)
    per_step = torch.stack([loss[step == k].mean() if (step == k).any() else nan for k in range(K)])
    acc = torch.stack(
        [correct[step == k].double().mean() if (step == k).any() else nan for k in range(K)]
    )
    return loss.mean(), per_step, acc, loss, correct


def oracle_grads(loss_fn, *tensors):
    """float64 copies of ``tensors`` (detached, on the CPU, requiring grad), and the value and
    gradients of ``loss_fn`` on them."""
    copies = [t.detach().cpu().double().requires_grad_() for t in tensors]
    value = loss_fn(*copies)
    return value, torch.autograd.grad(value, copies)
