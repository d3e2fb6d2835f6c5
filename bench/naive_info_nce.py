"""The naive CPC InfoNCE: the dense gather a user would write, the benchmarks' baseline.

Not part of the library: it materialises the (B, K, L, N + 1, D) candidate tensor (2.5 GB in
float32 at the paper's shape) that the reference and the fused kernels avoid. The
``naive`` and ``compiled`` providers of ``bench_info_nce.py`` time it; a test checks it
against the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cpc_fast.losses.info_nce_reference import compute_dtype


def cpc_info_nce_naive(
    predictions: Tensor,
    z: Tensor,
    neg_index: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """The dense gather a user would write: one (B, K, L, N + 1, D) candidate tensor.

    predictions (B, K, L, D), z (B, L, D), neg_index (B, K, L, N) frames of the same
    sequence. Same loss as the reference: the mean over rows with t + k + 1 < L.
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
