"""Support and uniformity checks for the negative samplers of the drop-ins (a helper module).

``chi_square`` compares one row's draw counts over its promised support with the uniform
expectation; ``chi2_critical`` is the upper quantile (Wilson-Hilferty) at z = 3.89, p = 5e-5
per test, so the few dozen tests of a file stay far from a false alarm while a sampler that
favours or starves a frame by a few percent over thousands of draws fails.
"""

from __future__ import annotations

import torch


def chi2_critical(df: int, z: float = 3.89) -> float:
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def chi_square(draws: torch.Tensor, support: torch.Tensor, size: int) -> float:
    """draws (n,) ints in [0, size), support (k,) the values each should take with
    probability 1/k -> the chi-square statistic (k - 1 degrees of freedom)."""
    counts = torch.bincount(draws.reshape(-1).long().cpu(), minlength=size)[support.cpu()]
    expected = draws.numel() / support.numel()
    return ((counts.double() - expected) ** 2 / expected).sum().item()


def is_uniform(draws: torch.Tensor, support: torch.Tensor, size: int) -> bool:
    """Every draw lies in ``support`` and their counts pass the chi-square test."""
    inside = torch.isin(draws.reshape(-1).cpu(), support.cpu()).all().item()
    k = support.numel()
    return bool(inside) and (k == 1 or chi_square(draws, support, size) < chi2_critical(k - 1))
