"""Benchmark: a CPC_audio-style criterion, written eagerly, against cpc-fast's equivalent.

CPC_audio (``cpc/criterion/criterion.py``, ``CPCUnsupersivedCriterion``) scores each of its
12 prediction steps against the positive and N negatives drawn once across the whole batch
and shared by all steps; score = dot product / D (a mean over D); cross-entropy with the
positive as class 0. hiddenEncoder D=256, 128 negatives, 12 steps, B=8 windows, at two
window lengths (one group each):

  CPC_audio's default   20480-sample windows (``--sizeWindow``): L=128 frames
  the paper's           10-s windows (160000 samples at 16 kHz): L=1000 frames

Providers, forward + backward, fp32, on the predictions and z the model would hand over
(the 12 linear predictors excluded on both sides):
  cpc_audio   the baseline: this file's eager criterion, written from the published formula
              (not CPC_audio's code): (B, N, W, D) negatives gathered once, then per step
              (B, 1 + N, W, D) candidates and their mean-over-D scores, W = L - K windows
  cpc-fast    ``cpc_info_nce`` on the same W windows with ``temperature=D``,
              ``negatives_from="batch"`` and ``share_negatives_across_steps=True`` (the fused
              kernels on CUDA; on a CPU the reference backend, which gathers each frame's
              negatives once for the 12 steps where the batch has more than 3 (K + N) frames)

Before timing, both are given the same negatives and must agree. On a CPU the eager
baseline at 10-s windows is a long case (marker ``long``): each call takes about 40 s and
16 GB there (twelve (8, 129, 988, 256) candidate tensors kept for the backward), so a plain
``pytest --benchmark`` leaves it out; ``--benchmark-long``, or naming this file, runs it.

    pytest --benchmark -k cpc_audio
    pytest --benchmark bench/bench_cpc_audio.py    # the 10-s baseline too
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from _harness import DEVICE, ON_GPU, Case, measure

from cpc_fast.losses.info_nce import cpc_info_nce

B, K, D, N = 8, 12, 256, 128
WINDOWS = {  # frames per window -> the group's name
    128: "CPC_audio criterion fwd+bwd fp32, CPC_audio's 20480-sample windows",
    1000: "CPC_audio criterion fwd+bwd fp32, the paper's 10-s windows",
}
_BATCH_OPTIONS = ("negatives_from", "share_negatives_across_steps")
# The eager baseline at 10-s windows on a CPU: minutes per case, opt-in.
_LONG = () if ON_GPU else (pytest.mark.long,)


def draw_negatives(L: int, generator: torch.Generator) -> torch.Tensor:
    """(B, N, W) rows of the flattened (B·L, D) batch, drawn uniformly, shared by the steps."""
    return torch.randint(0, B * L, (B, N, L - K), generator=generator, device=DEVICE)


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
def inputs(L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (B, K, W, D), a view of a (B, W, K, D) buffer as a model hands it over,
    and z (B, L, D)."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    pred = torch.randn(B, L - K, K, D, device=DEVICE, generator=g).permute(0, 2, 1, 3)
    z = torch.randn(B, L, D, device=DEVICE, generator=g)
    return pred.requires_grad_(), z.requires_grad_()


@pytest.mark.parametrize(
    "L, provider",
    [
        (128, "cpc_audio"),
        (128, "cpc-fast"),
        pytest.param(1000, "cpc_audio", marks=_LONG),
        (1000, "cpc-fast"),
    ],
)
def test_cpc_audio(benchmark, L, provider):
    case = Case(WINDOWS[L], provider, "cpc_audio", f"B={B} K={K} L={L} D={D} N={N}")
    pred, z = inputs(L)
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    if provider == "cpc_audio":

        def loss() -> torch.Tensor:
            return cpc_audio_criterion(pred, z, draw_negatives(L, generator))
    else:
        if not set(_BATCH_OPTIONS) <= set(inspect.signature(cpc_info_nce).parameters):
            case.skip("cpc_info_nce has no negatives_from='batch' in this checkout")
        with torch.no_grad():
            drawn = draw_negatives(L, generator)
            want = cpc_audio_criterion(pred, z, drawn).item()
            got = ours(pred, z, drawn).item()
        assert abs(got - want) <= 1e-4 * abs(want), f"cpc-fast {got} vs the eager {want}"

        def loss() -> torch.Tensor:
            return ours(pred, z)

    def setup() -> tuple:
        pred.grad = z.grad = None
        return ()

    def step() -> torch.Tensor:
        out = loss()
        out.backward()
        return out.detach()

    measure(benchmark, case, step, setup)
