"""PROVISIONAL (to be replaced by issue 3's fused module; the API is fixed).

InfoNCE with sampled negatives: the general form and the CPC form.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class CPCInfoNCEOutput(NamedTuple):
    loss: torch.Tensor  # () mean over valid rows
    loss_per_step: torch.Tensor  # (K,)
    accuracy_per_step: torch.Tensor  # (K,)


def fused_status() -> tuple[bool, str]:
    return False, "provisional module: fused kernels not written yet"


def default_backend_name() -> str:
    return "reference"


def sample_negatives(
    B: int, K: int, L: int, N: int, *, device=None, generator: torch.Generator | None = None,
    exclude_positive: bool = False,
) -> torch.Tensor:
    """(B, K, L, N) int64 frame indices, uniform over the same sequence."""
    if exclude_positive:
        idx = torch.randint(0, L - 1, (B, K, L, N), device=device, generator=generator)
        pos = (torch.arange(L, device=device).view(1, 1, L, 1)
               + torch.arange(1, K + 1, device=device).view(1, K, 1, 1))
        return idx + (idx >= pos).long()
    return torch.randint(0, L, (B, K, L, N), device=device, generator=generator)


def cpc_info_nce(
    predictions: torch.Tensor,
    z: torch.Tensor,
    num_negatives: int = 50,
    temperature: float = 1.0,
    neg_index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    exclude_positive: bool = False,
    backend: str | None = None,
) -> CPCInfoNCEOutput:
    B, K, L, D = predictions.shape
    if L <= K and L - 1 < 1:
        raise ValueError("sequence too short")
    if neg_index is None:
        if seed is not None:
            generator = torch.Generator(device=z.device).manual_seed(seed)
        neg_index = sample_negatives(B, K, L, num_negatives, device=z.device,
                                     generator=generator, exclude_positive=exclude_positive)
    losses, accs, total, count = [], [], 0.0, 0
    for k in range(K):
        T = L - k - 1
        if T <= 0:
            losses.append(predictions.new_zeros(()))
            accs.append(predictions.new_zeros(()))
            continue
        q = predictions[:, k, :T].float()  # (B, T, D)
        pos = z[:, k + 1 :].float()  # (B, T, D)
        negs = torch.gather(
            z.float().unsqueeze(1).expand(B, T, L, D), 2,
            neg_index[:, k, :T].unsqueeze(-1).expand(-1, -1, -1, D),
        )  # (B, T, N, D)
        cand = torch.cat([pos.unsqueeze(2), negs], 2)  # (B, T, N+1, D)
        scores = (cand * q.unsqueeze(2)).sum(-1) / temperature
        row_loss = torch.logsumexp(scores, -1) - scores[..., 0]
        losses.append(row_loss.mean())
        accs.append((scores[..., 0] > scores[..., 1:].max(-1).values).float().mean())
        total = total + row_loss.sum()
        count += row_loss.numel()
    return CPCInfoNCEOutput(total / count, torch.stack(losses), torch.stack(accs))
