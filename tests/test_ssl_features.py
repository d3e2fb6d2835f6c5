"""Speech SSL features (wav2vec 2.0, HuBERT, WavLM, data2vec-audio): from the cache and
without it, they are the model's own ``output_hidden_states`` for each file alone (the
plain loop of a Hugging Face feature extractor and model), padded batches and chunks
included; the layer choices; the resumable parts of the cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from emotion_fixtures import write_manifest, write_samples, write_wav
from ssl_fixtures import family_configs, plain_hidden_states, save_tiny_upstream

from cpc_fast.data.corpora.manifest import load_manifest
from cpc_fast.errors import UserInputError
from cpc_fast.features import cache as cache_module
from cpc_fast.features.cache import PartedEntry, open_entry
from cpc_fast.features.ssl import SSLFeatureCache, utterance_features
from cpc_fast.features.upstream import Upstream, chunk_plan, load_upstream
from cpc_fast.models.ssl_layers import LayerChoice, LayerSumRecognizer, WeightedLayerSum

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SECONDS = (0.9, 0.45, 1.3, 0.7, 1.0, 0.3)  # lengths that make padded batches
FP16 = 2.0**-10  # one float16 ulp, relative: what storing in float16 may change


@pytest.fixture(scope="module")
def upstreams(transformers, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("upstreams")
    return {
        name: save_tiny_upstream(transformers, config, root / name, normalize=name != "wavlm")
        for name, config in family_configs(transformers).items()
    }


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    rows = []
    for k, seconds in enumerate(SECONDS):
        write_wav(root / f"u{k}.wav", seconds, seed=k)
        rows.append((f"u{k}.wav", 1 + k % 3, 2, 3, "test" if k == 5 else "train", f"s{k % 2}", ""))
    write_manifest(root, rows)
    return root


def _close(actual: np.ndarray, reference: np.ndarray, rtol: float) -> None:
    """Within ``rtol`` of each value, or of the largest one for values near zero."""
    atol = rtol * float(np.abs(reference).max())
    np.testing.assert_allclose(actual, reference, rtol=rtol, atol=atol)


@pytest.mark.huggingface
@pytest.mark.parametrize("family", ["wav2vec2", "wav2vec2-large", "hubert", "wavlm", "data2vec"])
def test_features_are_the_models_own_hidden_states(
    family, transformers, upstreams, corpus_dir, tmp_path
) -> None:
    """Cached (float16, padded batches of several utterances) and uncached (one file), for
    every layer choice, against the plain loop's output_hidden_states of each file alone."""
    corpus = load_manifest(corpus_dir)
    waves = [corpus.wave(i) for i in range(len(corpus))]
    reference = [plain_hidden_states(transformers, upstreams[family], w) for w in waves]
    expected = {
        "weighted": lambda states: np.concatenate(states, axis=1),
        "mean:1-2": lambda states: np.mean(states[1:3], axis=0),
        "1": lambda states: states[1],  # the layers past 2 are not run
    }
    for spec, combine in expected.items():
        upstream = load_upstream(upstreams[family])
        cache = SSLFeatureCache(corpus, upstream.info, LayerChoice.parse(spec), tmp_path)
        features = cache.build(upstream, batch_seconds=4.0)
        assert upstream.batchable, "padded batches must give each utterance its own states"
        assert features.dtype == np.float16 and features.path.parent == tmp_path
        for i, states in enumerate(reference):
            _close(features[i].astype(np.float32), combine(states), FP16)
            alone = utterance_features(upstream, waves[i], cache.choice, cache.chunk)
            _close(alone, combine(states), 1e-4)


@pytest.mark.huggingface
def test_the_batch_check_catches_padding_that_leaks(
    transformers, upstreams, corpus_dir, tmp_path, monkeypatch
) -> None:
    """Without the valid-frame GroupNorm a BASE model's padded batch differs from its
    utterances alone: the check at the start of an extraction finds it, and the model then
    runs one utterance at a time (still the plain loop's features)."""
    monkeypatch.setattr(Upstream, "_patch", lambda self: None)
    corpus = load_manifest(corpus_dir)
    upstream = load_upstream(upstreams["wav2vec2"])
    assert upstream.check_batches() is False
    features = SSLFeatureCache(corpus, upstream.info, LayerChoice.parse("3"), tmp_path).build(
        upstream
    )
    reference = plain_hidden_states(transformers, upstreams["wav2vec2"], corpus.wave(2))[3]
    _close(features[2].astype(np.float32), reference, FP16)


@pytest.mark.huggingface
def test_long_files_run_in_overlapping_chunks(transformers, upstreams, tmp_path) -> None:
    upstream = load_upstream(upstreams["hubert"])
    info = upstream.info
    samples, chunk = 52_000, 16_000  # 3.25 s in chunks of 1 s
    plan = chunk_plan(samples, chunk, info)
    assert plan[0][2] == 0 and plan[-1][3] == info.frames(samples)
    for (start, end, _, last), (next_start, _, next_first, _) in zip(plan, plan[1:], strict=False):
        assert last == next_first and next_start < end  # tiled, and the chunks overlap
        assert start % info.hop == 0 and end - start == chunk
        assert last - next_start // info.hop >= 5  # a cut is away from each chunk's edge
        assert start // info.hop + info.frames(end - start) - last >= 5
    wave = 0.1 * np.random.default_rng(3).standard_normal(samples).astype(np.float32)
    values = upstream.normalized(wave)  # the whole file's normalisation, then the chunks
    model = transformers.AutoModel.from_pretrained(upstreams["hubert"]).eval()
    expected = np.zeros((info.frames(samples), info.hidden_size), np.float32)
    for start, end, first, last in plan:
        with torch.no_grad():
            piece = torch.from_numpy(values[start:end])[None]
            states = model(piece, output_hidden_states=True).hidden_states[2][0].numpy()
        expected[first:last] = states[first - start // info.hop : last - start // info.hop]
    actual = utterance_features(upstream, wave, LayerChoice.parse("2"), chunk)
    _close(actual, expected, 1e-4)
    # The cache's own stitching, the long file's chunks in padded batches with others.
    write_samples(tmp_path / "audio" / "long.wav", wave)
    write_wav(tmp_path / "audio" / "short.wav", 0.8)
    rows = [(f"{n}.wav", 1, 1, 1, "train", "s", "") for n in ("short", "long")]
    corpus = load_manifest(write_manifest(tmp_path / "audio", rows))
    cache = SSLFeatureCache(
        corpus, info, LayerChoice.parse("2"), tmp_path / "cache", chunk_seconds=1.0
    )
    assert cache.chunk == chunk
    _close(cache.build(upstream, batch_seconds=2.5)[1].astype(np.float32), expected, FP16)


def test_layer_choices() -> None:
    for spec in ("weighted", "mean", "4", "weighted:2-5", "mean:0-0"):
        assert LayerChoice.parse(spec).spec == spec
    for bad in ("all", "weighted:5-2", "-1", "mean:3"):
        with pytest.raises(ValueError):
            LayerChoice.parse(bad)
    weighted = LayerChoice.parse("weighted")
    assert list(weighted.states(13)) == list(range(13)) and weighted.stored_states(13) == 13
    assert LayerChoice.parse("mean").stored_states(13) == 1
    assert LayerChoice.parse("13").problem(13) and not LayerChoice.parse("12").problem(13)
    assert weighted.describe(13) == "weighted sum of layers 0-12"
    assert LayerChoice.parse("6").describe() == "layer 6"
    states = [torch.full((1, 2, 3), float(k)) for k in range(4)]
    assert LayerChoice.parse("mean:1-3").select(states).flatten().tolist() == [2.0] * 6
    assert LayerChoice.parse("weighted:2-3").select(states).shape == (1, 2, 6)


def test_weighted_layer_sum_is_superbs_formula_and_learns() -> None:
    torch.manual_seed(0)
    layer_sum = WeightedLayerSum(3, 4)
    mean, std = torch.randn(3, 4), torch.rand(3, 4) + 0.5
    layer_sum.set_normalization(mean, std)
    with torch.no_grad():
        layer_sum.weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
    x = torch.randn(2, 5, 12)
    standardised = (x.view(2, 5, 3, 4).double() - mean.double()) / std.double()
    weights = torch.softmax(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), 0)
    expected = (standardised * weights[:, None]).sum(2)  # sum_l softmax(w)_l h_l
    torch.testing.assert_close(layer_sum(x).double(), expected, rtol=1e-6, atol=1e-6)
    from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig

    model = LayerSumRecognizer(layer_sum, EmotionRecognizer(RecognizerConfig(input_dim=4)))
    model(x, torch.tensor([5, 3])).square().sum().backward()
    assert layer_sum.weights.grad is not None and layer_sum.weights.grad.abs().sum() > 0


def _rows(i: int) -> np.ndarray:
    return np.full((i + 1, 3), i, np.float32)


def test_parts_resume_after_a_kill_and_read_as_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "COMMIT_SECONDS", 0.0)  # every utterance committed
    frames = [i + 1 for i in range(7)]
    entry = PartedEntry(tmp_path, "ssl", {"a": 1}, frames, 3, bounds=[0, 3, 7])
    asked: list[list[int]] = []

    def killed_after(n):
        def compute(indices):
            asked.append(list(indices))
            for count, i in enumerate(indices):
                if count == n:
                    raise KeyboardInterrupt  # the process dies here
                yield i, _rows(i)

        return compute

    with pytest.raises(KeyboardInterrupt):
        entry.build_part(1, killed_after(2))
    assert entry.logged(1) == {3, 4} and not entry.part_done(1)
    with open(entry.path / "part-00001.done", "a") as fh:
        fh.write("5")  # a line torn by the kill: not counted
    again = PartedEntry(tmp_path, "ssl", {"a": 1}, frames, 3, bounds=[0, 7])  # layout wins
    assert again.bounds == [0, 3, 7]
    resumed: list[int] = []
    again.build_part(1, lambda idx: ((resumed.append(i), (i, _rows(i)))[1] for i in idx))
    assert resumed == [5, 6] and again.part_done(1)
    with pytest.raises(ValueError, match=r"parts \[0\]"):
        again.finish()
    again.build_part(0, killed_after(99))
    features = again.finish()
    assert len(features.blocks) == 2 and features.dtype == np.float16
    for i in range(7):
        np.testing.assert_array_equal(features[i], _rows(i))
    assert not list(tmp_path.glob("*/.part-*")) and not list(tmp_path.glob("*/*.partial"))
    os.truncate(features.path / "part-00001.bin", 10)
    with pytest.raises(UserInputError, match="part-00001.bin holds 10 bytes"):
        open_entry(features.path)


@pytest.mark.huggingface
def test_clear_errors(upstreams, tmp_path, monkeypatch, corpus_dir) -> None:
    with pytest.raises(UserInputError, match="no such folder"):
        load_upstream(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"empty: not a Hugging Face model folder"):
        load_upstream(tmp_path / "empty")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((upstreams["hubert"] / name).read_bytes())
    with pytest.raises(UserInputError, match="preprocessor_config.json"):
        load_upstream(bare)
    upstream = load_upstream(upstreams["hubert"])
    with pytest.raises(UserInputError, match="`ssl_layers` 4 asks for hidden state 4"):
        SSLFeatureCache(load_manifest(corpus_dir), upstream.info, LayerChoice.parse("4"), tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserInputError, match=r"pip install 'cpc-fast\[ssl\]'"):
        load_upstream(upstreams["hubert"])
