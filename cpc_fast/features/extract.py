"""The recognizer's input features for a whole corpus, through the on-disk cache.

* :func:`lfbe_features`: 40-d LFBE (the ``sup`` setup), floor(n / 160) frames per utterance.
* :func:`cpc_context_features`: the context vectors c_t of a frozen CPC model (``mini``,
  ``pre``), floor(n / 160) frames of 256 (the model's ``context_dim``).

Each utterance is run alone (batch of one), so its features never depend on which other
utterances shared a batch (zero-padding changes the CPC encoder's last frames): the cached
features are exactly what ``cpc-fast predict`` computes for a single file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np
import torch

from cpc_fast.data.labelled import EmotionCorpus
from cpc_fast.errors import UserInputError
from cpc_fast.features.cache import FeatureSet, cached_features, module_digest
from cpc_fast.features.lfbe import LFBE, LFBEConfig

Progress = Callable[[Iterable[int]], Iterable[int]] | None


def _frames_ok(wave: np.ndarray, hop: int, corpus: EmotionCorpus, index: int) -> None:
    if wave.shape[0] < hop:
        record = corpus.records[index]
        raise UserInputError(
            f"{record.source}: {record.utt_id} has {wave.shape[0]} samples, shorter than one "
            f"frame ({hop}); remove the row"
        )


def lfbe_features(
    corpus: EmotionCorpus,
    cache_dir: str | os.PathLike,
    *,
    config: LFBEConfig | None = None,
    progress: Progress = None,
) -> FeatureSet:
    """(L_i, 40) log mel filterbank energies of every utterance of ``corpus``."""
    config = config or LFBEConfig()
    module = LFBE(config)

    def extract(i: int) -> np.ndarray:
        wave = corpus.wave(i)
        _frames_ok(wave, config.hop_length, corpus, i)
        with torch.inference_mode():
            return module(torch.from_numpy(np.asarray(wave, np.float32)).unsqueeze(0))[0].numpy()

    parts = {"features": config.to_dict(), "dataset": corpus.fingerprint()}
    return cached_features(cache_dir, "lfbe", parts, len(corpus), extract, progress=progress)


@torch.inference_mode()
def cpc_contexts(model: torch.nn.Module, wave: np.ndarray, device: torch.device) -> np.ndarray:
    """(n,) waveform -> (floor(n / 160), context_dim) float32 contexts of a CPC model."""
    x = torch.from_numpy(np.asarray(wave, np.float32)).to(device).unsqueeze(0)  # (1, T)
    return model.context(x)[0].float().cpu().numpy()


def cpc_context_features(
    corpus: EmotionCorpus,
    model: torch.nn.Module,
    cache_dir: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    digest: str | None = None,
    progress: Progress = None,
) -> FeatureSet:
    """(L_i, context_dim) contexts of a frozen CPC ``model`` for every utterance.

    ``digest`` identifies the weights (default: :func:`module_digest` of ``model``).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    digest = digest or module_digest(model)
    hop = model.frame_hop

    def extract(i: int) -> np.ndarray:
        wave = corpus.wave(i)
        _frames_ok(wave, hop, corpus, i)
        return cpc_contexts(model, wave, device)

    parts = {"features": "cpc-context", "model": digest, "dataset": corpus.fingerprint()}
    return cached_features(cache_dir, "cpc", parts, len(corpus), extract, progress=progress)


__all__ = ["cpc_context_features", "cpc_contexts", "lfbe_features"]
