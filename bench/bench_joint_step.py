"""Benchmark: one training step of the ``joint`` setup on the CPU, at the demo's shape.

Step = forward of CPC + recognizer on a zero-padded batch, CCC loss + λ·InfoNCE over the
valid frames (``masked_cpc_info_nce``), backward, Adam: B = 8 utterances of the tiny
synthetic emotion corpus (0.8-1.6 s, padded to the longest), the tiny CPC preset
(64-d, K = 12, N = 16), the paper's recognizer. Two ways to compute the InfoNCE:

  padded   the CPU path: per block of prediction steps, (B, k, L, D)(B, 1, D, L) scores
           against every frame of the utterance, then the N + 1 drawn ones read from them
  rows     the general path (what CUDA runs through the fused kernels): flattened valid
           rows, (M, N + 1, D) candidates gathered, their gradients scattered back

``extra_info``: ``loss_ms`` = median forward + backward of the InfoNCE alone on the step's
own predictions and z, and ``loss_fraction`` = its share of the step.

    pytest bench/bench_joint_step.py --benchmark-json=bench/results/joint-step-cpu.json
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from cpc_fast.config.pretrain import tiny
from cpc_fast.data.batching import pad_collate
from cpc_fast.data.corpora.synthetic_emotion import load_synthetic
from cpc_fast.emotion.joint import JointModel
from cpc_fast.losses import padded_info_nce
from cpc_fast.losses.ccc import ccc_loss
from cpc_fast.losses.padded_info_nce import masked_cpc_info_nce
from cpc_fast.models.cpc import CPCModel
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig

B, LAMBDA, ROUNDS = 8, 0.1, 15


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    corpus = load_synthetic("tiny")
    pick = np.random.default_rng(0).choice(len(corpus), B, replace=False)
    wave, lengths = pad_collate([corpus.wave(int(i)) for i in pick])
    return torch.from_numpy(wave), torch.from_numpy(lengths)


def _median_ms(fn) -> float:
    fn()
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@pytest.mark.parametrize("provider", ["padded", "rows"])
def test_joint_step_cpu(benchmark, monkeypatch, provider):
    if provider == "rows":  # no score block fits: the general flattened-rows path
        monkeypatch.setattr(padded_info_nce, "_SCORE_ELEMENTS", 0)
    config = tiny().model
    torch.manual_seed(0)
    cpc = CPCModel(config)
    model = JointModel(cpc, EmotionRecognizer(RecognizerConfig(input_dim=config.context_dim)))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
    wave, lengths = _batch()
    frames = lengths // cpc.frame_hop
    target = torch.randn(B, 3, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)

    def step() -> None:
        pred, out = model(wave, lengths)
        nce = masked_cpc_info_nce(
            out.predictions, out.z, frames, config.num_negatives, generator=generator
        )
        loss = ccc_loss(pred, target) + LAMBDA * nce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    with torch.no_grad():
        out = model(wave, lengths)[1]
    predictions = out.predictions.detach().requires_grad_()  # the model's permuted layout
    z = out.z.detach().requires_grad_()
    loss_ms = _median_ms(
        lambda: masked_cpc_info_nce(
            predictions, z, frames, config.num_negatives, generator=generator
        ).backward()
    )
    step_ms = 1000 * benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "provider": provider,
            "shape": f"B={B} T={wave.shape[1]} L={int(frames.max())} K=12 N=16 D=64",
            "loss_ms": round(loss_ms, 2),
            "loss_fraction": round(loss_ms / step_ms, 3),
            "threads": torch.get_num_threads(),
        }
    )
