"""The feature cache: hits skip extraction, and a changed dataset or checkpoint misses."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from emotion_fixtures import write_wav

from cpc_fast.data.corpora.manifest import load_manifest
from cpc_fast.features.cache import cached_features, module_digest
from cpc_fast.features.extract import cpc_context_features, lfbe_features
from cpc_fast.features.lfbe import lfbe
from cpc_fast.models.cpc import CPCConfig, CPCModel

TINY_CPC = CPCConfig(encoder_dim=16, context_dim=24, prediction_steps=2)


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Path:
    rows = []
    for k, seconds in enumerate((0.05, 0.2, 0.13, 0.31)):
        write_wav(tmp_path / "data" / f"{k}.wav", seconds, seed=k)
        rows.append(f"{k}.wav,{k},{k},{k},{'test' if k == 3 else 'train'}")
    (tmp_path / "data" / "manifest.csv").write_text(
        "path,activation,valence,dominance,split\n" + "\n".join(rows) + "\n"
    )
    return tmp_path / "data"


def _counting(extract):
    calls = []

    def wrapped(i):
        calls.append(i)
        return extract(i)

    return wrapped, calls


def test_round_trip_and_hit(tmp_path: Path) -> None:
    arrays = [
        np.random.default_rng(i).standard_normal((i + 1, 5)).astype(np.float32) for i in range(4)
    ]
    extract, calls = _counting(lambda i: arrays[i])
    fs = cached_features(tmp_path, "x", {"a": 1}, 4, extract)
    assert calls == [0, 1, 2, 3] and len(fs) == 4 and fs.dim == 5
    assert list(fs.lengths()) == [1, 2, 3, 4]
    for i in range(4):
        np.testing.assert_array_equal(fs[i], arrays[i])
    again = cached_features(tmp_path, "x", {"a": 1}, 4, extract)
    assert calls == [0, 1, 2, 3]  # a hit: nothing recomputed
    np.testing.assert_array_equal(again.data, fs.data)
    cached_features(tmp_path, "x", {"a": 2}, 4, extract)  # another key: computed again
    assert len(calls) == 8
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp folders left


def test_failed_extraction_leaves_no_entry(tmp_path: Path) -> None:
    def extract(i):
        if i == 2:
            raise RuntimeError("boom")
        return np.zeros((3, 2), np.float32)

    with pytest.raises(RuntimeError, match="boom"):
        cached_features(tmp_path, "x", {"a": 1}, 4, extract)
    assert os.listdir(tmp_path) == []


def test_lfbe_features_match_direct_and_invalidate_on_audio_change(
    corpus_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    corpus = load_manifest(corpus_dir)
    fs = lfbe_features(corpus, cache)
    for i in range(len(corpus)):
        direct = lfbe(torch.from_numpy(corpus.wave(i))).numpy()
        np.testing.assert_array_equal(fs[i], direct)
    assert lfbe_features(load_manifest(corpus_dir), cache).path == fs.path  # same audio: hit
    write_wav(corpus_dir / "1.wav", 0.4, seed=99)  # the audio changes
    os.utime(corpus_dir / "1.wav", ns=(1, 1))
    changed = lfbe_features(load_manifest(corpus_dir), cache)
    assert changed.path != fs.path and changed[1].shape[0] == 40


def test_cpc_features_invalidate_on_new_weights(corpus_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    corpus = load_manifest(corpus_dir)
    torch.manual_seed(0)
    model = CPCModel(TINY_CPC)
    fs = cpc_context_features(corpus, model, cache)
    assert fs.dim == 24 and list(fs.lengths()) == [5, 20, 13, 31]
    with torch.no_grad():
        direct = model.context(torch.from_numpy(corpus.wave(2))[None])[0].numpy()
    np.testing.assert_allclose(fs[2], direct, rtol=1e-6, atol=1e-6)
    assert cpc_context_features(corpus, model, cache).path == fs.path  # hit
    digest = module_digest(model)
    with torch.no_grad():
        model.gru.bias_hh_l0[0] += 1e-3  # any change to the weights
    assert module_digest(model) != digest
    refreshed = cpc_context_features(corpus, model, cache)
    assert refreshed.path != fs.path
    assert not np.array_equal(refreshed[2], fs[2])
