"""Concordance correlation coefficient (Lin 1989) and the paper's CCC loss (eq. 8).

    CCC(x, y) = 2 σ_xy / (σ_x² + σ_y² + (μ_x − μ_y)²)

with population statistics (divide by N). It measures agreement with the identity line, so
unlike Pearson's r it is not invariant to an affine map applied to one side only; it IS
invariant to the same increasing affine map applied to both sides, which is why training on
normalised labels and inverting the map on the predictions reports the same CCC.

Degenerate columns: the denominator is zero only when both columns are constant with equal
means, i.e. the predictions equal the targets exactly; CCC is then defined as 1 (perfect
agreement). A constant column against a varying one has σ_xy = 0 and a positive denominator,
so its CCC is 0. "Constant" is decided exactly (max == min), so rounding in the mean of a
constant column never produces a spurious non-zero variance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PAPER_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)


def _centered(x: torch.Tensor) -> torch.Tensor:
    """x − mean(x) over dim 0, exactly zero in value for constant columns.

    The value of a constant column's deviations is zeroed but the gradient is kept, so a
    network whose outputs have collapsed to a constant still receives the covariance
    gradient (y_i − μ_y) / N that pulls it back towards the targets.
    """
    xc = x - x.mean(dim=0, keepdim=True)
    constant = x.amax(dim=0, keepdim=True) == x.amin(dim=0, keepdim=True)
    return xc - torch.where(constant, xc.detach(), torch.zeros_like(xc))


def ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-column CCC of ``pred`` against ``target``.

    Args:
        pred: (N,) or (N, C) predictions.
        target: the same shape.
    Returns:
        () for 1-D inputs, else (C,): CCC of each column, in [-1, 1].
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() not in (1, 2) or pred.shape[0] == 0:
        raise ValueError(f"expected (N,) or (N, C) with N >= 1, got {tuple(pred.shape)}")
    xc, yc = _centered(pred), _centered(target)  # (N, C)
    var_x = (xc * xc).mean(dim=0)
    var_y = (yc * yc).mean(dim=0)
    cov = (xc * yc).mean(dim=0)
    mean_gap = pred.mean(dim=0) - target.mean(dim=0)
    denom = var_x + var_y + mean_gap * mean_gap
    identical = denom == 0
    # A safe denominator keeps the unused branch of torch.where free of 0/0 (NaN gradients).
    safe = torch.where(identical, torch.ones_like(denom), denom)
    return torch.where(identical, torch.ones_like(denom), 2 * cov / safe)


def ccc_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: Sequence[float] = PAPER_WEIGHTS,
) -> torch.Tensor:
    """The paper's loss: 1 − Σ_i w_i · CCC_i over the minibatch.

    Args:
        pred: (B, C) predictions, columns (activation, valence, dominance) for C = 3.
        target: (B, C) labels on the same scale.
        weights: C weights (α, β, γ); the paper uses 1/3 each.
    Returns:
        () loss.
    """
    if pred.dim() != 2:
        raise ValueError(f"expected pred of shape (B, C), got {tuple(pred.shape)}")
    if len(weights) != pred.shape[1]:
        raise ValueError(f"{len(weights)} weights for {pred.shape[1]} output columns")
    w = torch.as_tensor(list(weights), dtype=pred.dtype, device=pred.device)
    return 1 - (w * ccc(pred, target)).sum()


class CCCLoss(nn.Module):
    """Module form of :func:`ccc_loss`."""

    def __init__(self, weights: Sequence[float] = PAPER_WEIGHTS) -> None:
        super().__init__()
        self.weights = tuple(float(w) for w in weights)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ccc_loss(pred, target, self.weights)


__all__ = ["PAPER_WEIGHTS", "CCCLoss", "ccc", "ccc_loss"]
