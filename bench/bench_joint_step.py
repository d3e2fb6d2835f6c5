"""Benchmark: one training step of the ``joint`` setup on the CPU, at the demo's shape.

Step = forward of CPC + recognizer on a zero-padded batch, CCC loss + λ·InfoNCE over the
valid frames (``masked_cpc_info_nce``), backward, Adam: B = 8 utterances of the tiny
synthetic emotion corpus (0.8-1.6 s, padded to the longest), the tiny CPC preset
(64-d, K = 12, N = 16), the paper's recognizer. Two ways to compute the InfoNCE:

  padded   the CPU path: per block of prediction steps, (B, k, L, D)(B, 1, D, L) scores
           against every frame of the utterance, then the N + 1 drawn ones read from them
  rows     the general path (what CUDA runs through the fused kernels): flattened valid
           rows, (M, N + 1, D) candidates gathered, their gradients scattered back

Baseline ``rows``. Columns: ``loss`` = median forward + backward of the InfoNCE alone on the
step's own predictions and z, and ``loss share`` = its share of the step. CPU work on any
machine (the demo trains there).

    pytest --benchmark -k joint_step
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _harness import Case, import_needing_soundfile, measure, median_seconds, show

from cpc_fast.data.batching import pad_collate
from cpc_fast.losses import padded_info_nce
from cpc_fast.losses.ccc import ccc_loss
from cpc_fast.models.cpc import CPCModel
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig

B, LAMBDA = 8, 0.1


def _batch(emotion_corpora) -> tuple[torch.Tensor, torch.Tensor]:
    corpus = emotion_corpora.load_synthetic("tiny")
    pick = np.random.default_rng(0).choice(len(corpus), B, replace=False)
    wave, lengths = pad_collate([corpus.wave(int(i)) for i in pick])
    return torch.from_numpy(wave), torch.from_numpy(lengths)


@pytest.mark.parametrize("provider", ["rows", "padded"])
def test_joint_step(benchmark, monkeypatch, provider):
    case = Case("joint training step (demo shape)", provider, "rows", "B=8", device="cpu")
    pretrain, emotion_corpora, joint = import_needing_soundfile(
        case,
        "cpc_fast.config.pretrain",
        "cpc_fast.data.corpora.synthetic_emotion",
        "cpc_fast.emotion.joint",
    )
    if provider == "rows":  # no score block fits: the general flattened-rows path
        monkeypatch.setattr(padded_info_nce, "_SCORE_ELEMENTS", 0)
    config, info_nce = pretrain.tiny().model, pretrain.tiny().loss
    torch.manual_seed(0)
    cpc = CPCModel(config)
    recognizer = EmotionRecognizer(RecognizerConfig(input_dim=config.context_dim))
    model = joint.JointModel(cpc, recognizer)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
    wave, lengths = _batch(emotion_corpora)
    frames = lengths // cpc.frame_hop
    target = torch.randn(B, 3, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)

    def step() -> None:
        pred, out = model(wave, lengths)
        nce = info_nce.padded(out.predictions, out.z, frames, generator=generator)
        loss = ccc_loss(pred, target) + LAMBDA * nce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    shape = f"B={B} T={wave.shape[1]} L={int(frames.max())} K=12 N=16 D=64"
    case = dataclasses.replace(case, shape=shape)
    step_s = measure(benchmark, case, step)
    if step_s is None:
        return
    with torch.no_grad():
        out = model(wave, lengths)[1]
    predictions = out.predictions.detach().requires_grad_()  # the model's permuted layout
    z = out.z.detach().requires_grad_()
    loss_s = median_seconds(
        lambda: info_nce.padded(predictions, z, frames, generator=generator).backward(),
        rounds=benchmark.stats.stats.rounds,
        device="cpu",
    )
    show(benchmark, loss=f"{loss_s * 1e3:.1f} ms", **{"loss share": f"{loss_s / step_s:.0%}"})
