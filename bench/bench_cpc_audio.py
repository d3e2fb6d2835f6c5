"""Benchmark: a CPC_audio-style criterion, written eagerly, against cpc-fast's equivalent.

CPC_audio (``cpc/criterion/criterion.py``, ``CPCUnsupersivedCriterion``) scores each of its
12 prediction steps against the positive and N negatives drawn once across the whole batch
and shared by all steps; score = dot product / D (a mean over D); cross-entropy with the
positive as class 0. The shape is CPC_audio's default configuration: 20480-sample windows
(L=128 frames), hiddenEncoder D=256, 128 negatives, 12 steps; B=8 windows (2 on a CPU).

Providers, forward + backward, fp32, on the predictions and z the model would hand over
(the 12 linear predictors excluded on both sides):
  cpc_audio   the baseline: this file's eager criterion, written from the published formula
              (not CPC_audio's code): (B, N, W, D) negatives gathered once, then per step
              (B, 1 + N, W, D) candidates and their mean-over-D scores, W = L - K windows
  cpc-fast    ``cpc_info_nce`` on the same W windows with ``temperature=D``,
              ``negatives_from="batch"`` and ``share_negatives_across_steps=True`` (the fused
              kernels on CUDA, the reference backend on a CPU)

Before timing, both are given the same negatives and must agree.

    pytest --benchmark -k cpc_audio
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from _harness import DEVICE, ON_GPU, Case, measure

from cpc_fast.losses.info_nce import cpc_info_nce

B = 8 if ON_GPU else 2  # the eager criterion takes seconds per call on a CPU at B=8
K, L, D, N = 12, 128, 256, 128
W = L - K
SHAPE = f"B={B} K={K} L={L} D={D} N={N}" + ("" if ON_GPU else " (B=8 on a GPU)")
_BATCH_OPTIONS = ("negatives_from", "share_negatives_across_steps")


def draw_negatives(generator: torch.Generator) -> torch.Tensor:
    """(B, N, W) rows of the flattened (B·L, D) batch, drawn uniformly, shared by the steps."""
    return torch.randint(0, B * L, (B, N, W), generator=generator, device=DEVICE)


def cpc_audio_criterion(pred: torch.Tensor, z: torch.Tensor, drawn: torch.Tensor):
    """pred (B, K, W, D) step k's prediction of z[:, t + k + 1] for windows t < W, z (B, L, D),
    drawn (B, N, W) -> the mean over steps of each step's mean cross-entropy."""
    batch, steps, windows, dim = pred.shape
    negatives = z.reshape(-1, dim)[drawn]  # (B, N, W, D)
    label = torch.zeros(batch, windows, dtype=torch.long, device=z.device)
    losses = []
    for k in range(steps):
        positive = z[:, k + 1 : k + 1 + windows].unsqueeze(1)  # (B, 1, W, D)
        candidates = torch.cat([positive, negatives], 1)  # (B, 1 + N, W, D)
        scores = (candidates * pred[:, k].unsqueeze(1)).mean(-1)  # (B, 1 + N, W)
        losses.append(torch.nn.functional.cross_entropy(scores, label))
    return torch.stack(losses).mean()


def ours(pred: torch.Tensor, z: torch.Tensor, drawn: torch.Tensor | None = None):
    """cpc-fast's form of the same criterion; ``drawn`` (B, N, W) as the eager one's, or None
    to let it draw (from torch's default generator: no device sync)."""
    neg_index = None if drawn is None else drawn.transpose(1, 2).unsqueeze(1)  # (B, 1, W, N)
    options = dict(zip(_BATCH_OPTIONS, ("batch", True), strict=True))
    return cpc_info_nce(pred, z, N, temperature=D, neg_index=neg_index, **options).loss


@functools.cache
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(0)
    pred = torch.randn(B, L, K, D, device=DEVICE, generator=g).permute(0, 2, 1, 3)
    z = torch.randn(B, L, D, device=DEVICE, generator=g)
    return pred.requires_grad_(), z.requires_grad_()


@pytest.mark.parametrize("provider", ["cpc_audio", "cpc-fast"])
def test_cpc_audio(benchmark, provider):
    case = Case("CPC_audio criterion fwd+bwd fp32", provider, "cpc_audio", SHAPE)
    pred, z = inputs()
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    if provider == "cpc_audio":

        def loss() -> torch.Tensor:
            return cpc_audio_criterion(pred[:, :, :W], z, draw_negatives(generator))
    else:
        if not set(_BATCH_OPTIONS) <= set(inspect.signature(cpc_info_nce).parameters):
            case.skip("cpc_info_nce has no negatives_from='batch' in this checkout")
        with torch.no_grad():
            drawn = draw_negatives(generator)
            want = cpc_audio_criterion(pred[:, :, :W], z, drawn).item()
            got = ours(pred[:, :, :W], z, drawn).item()
        assert abs(got - want) <= 1e-4 * abs(want), f"cpc-fast {got} vs the eager {want}"

        def loss() -> torch.Tensor:
            return ours(pred[:, :, :W], z)

    def setup() -> tuple:
        pred.grad = z.grad = None
        return ()

    def step() -> torch.Tensor:
        out = loss()
        out.backward()
        return out.detach()

    measure(benchmark, case, step, setup)
