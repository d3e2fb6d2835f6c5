"""Benchmark: the CPC encoder's forward + backward, its layers as ``Conv1d`` or as block GEMMs.

Every layer of the encoder has a kernel of two strides, so it can run as one GEMM over blocks
of s frames laid out (B, L, C) (:mod:`cpc_fast.models.block_conv`). The encoder picks the
blocks on a CPU and ``Conv1d`` (cuDNN) on CUDA; this suite measures both everywhere, so a GPU
run says whether CUDA should switch too:

  conv1d   the layers as ``F.conv1d`` on (B, C, L), a per-frame norm through transposes
  blocks   the layers as block GEMMs on (B, L, C)

Shapes: ``tiny`` is a pre-training step of the tiny preset (4 windows of 0.64 s, 64 channels,
per-frame norm), what the demo and the protocol train on a CPU; ``paper`` is 8 windows of
10 s through the paper's encoder (on a CPU, 2 windows). bf16 autocast on CUDA, float32 on the
CPU. Baseline ``conv1d``.

    pytest --benchmark -k encoder
"""

from __future__ import annotations

import pytest
import torch
from _harness import DEVICE, ON_GPU, Case, measure

from cpc_fast.config import pretrain
from cpc_fast.models.cpc import CPCConfig, CPCModel

SHAPES = {
    "tiny": (pretrain.tiny().model, 4, 10_240),
    "paper": (CPCConfig(), 8 if ON_GPU else 2, 160_000),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", ["conv1d", "blocks"])
def test_encoder(benchmark, shape, provider):
    config, batch, samples = SHAPES[shape]
    case = Case(
        f"CPC encoder forward + backward ({shape})",
        provider,
        "conv1d",
        f"B={batch} T={samples} C={config.encoder_dim} norm={config.encoder_norm}",
    )
    torch.manual_seed(0)
    encoder = CPCModel(config).encoder.to(DEVICE)
    wave = torch.randn(batch, samples, device=DEVICE)
    if provider == "conv1d":
        encoder.blocks = False
    else:  # the block path wherever the suite runs, CUDA included
        encoder.forward = encoder._blocks
    dtype = torch.bfloat16 if ON_GPU else None

    def step() -> None:
        encoder.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
            z = encoder(wave)
        z.float().square().mean().backward()

    measure(benchmark, case, step)
