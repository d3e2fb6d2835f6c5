"""The synthetic labelled corpus: IEMOCAP-like layout, determinism, documented prosody map,
speaker dependence, and learnable-but-not-trivial labels (measured by a linear probe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpc_fast.data.corpora.synthetic_emotion import (
    SyntheticEmotionConfig,
    SyntheticEmotionCorpus,
    _speaker_style,
    emotion_prosody,
    load_synthetic,
)
from cpc_fast.errors import UserInputError
from cpc_fast.features.lfbe import lfbe
from cpc_fast.losses.ccc import ccc


@pytest.fixture(scope="module")
def tiny() -> SyntheticEmotionCorpus:
    return load_synthetic("tiny")


def test_layout(tiny: SyntheticEmotionCorpus) -> None:
    assert len(tiny) == 5 * 2 * 12
    speakers = sorted({r.speaker for r in tiny.records})
    assert speakers == [f"Ses{s:02d}{g}" for s in range(1, 6) for g in "FM"]
    assert {r.emotion for r in tiny.records} == {"neu", "hap", "exc", "ang", "sad"}
    labels = tiny.labels()
    assert labels.shape == (120, 3) and labels.min() >= 1 and labels.max() <= 5
    lengths = np.array([tiny.wave(i).shape[0] for i in range(len(tiny))]) / 16000
    assert lengths.min() >= 0.8 and lengths.max() <= 1.6
    folds = tiny.folds()
    assert len(folds) == 5 and all(len(f.test) == 24 for f in folds)


def test_deterministic_from_the_seed(tiny: SyntheticEmotionCorpus) -> None:
    again = load_synthetic("tiny")
    assert again.records == tiny.records
    np.testing.assert_array_equal(again.wave(7), tiny.wave(7))
    assert again.fingerprint() == tiny.fingerprint()
    other = load_synthetic("tiny", seed=1)
    assert other.fingerprint() != tiny.fingerprint()
    assert not np.array_equal(other.labels(), tiny.labels())


def test_prosody_follows_the_documented_map() -> None:
    style = _speaker_style("Ses01F", 0)
    low = emotion_prosody((1.5, 3.0, 3.0), style, np.random.default_rng(0))
    high = emotion_prosody((4.5, 3.0, 3.0), style, np.random.default_rng(0))  # same noise
    assert high.rate > low.rate and high.loudness_db > low.loudness_db
    assert high.pitch_shift_semitones > low.pitch_shift_semitones
    assert high.pitch_range > low.pitch_range and high.pause_rate < low.pause_rate
    sad = emotion_prosody((3.0, 1.5, 3.0), style, np.random.default_rng(0))
    glad = emotion_prosody((3.0, 4.5, 3.0), style, np.random.default_rng(0))
    assert glad.pitch_shift_semitones > sad.pitch_shift_semitones
    assert glad.spectral_tilt_db_per_octave < sad.spectral_tilt_db_per_octave
    # Speaker-dependent: the same label and noise sound different for another speaker.
    other = emotion_prosody((4.5, 3.0, 3.0), _speaker_style("Ses03M", 0), np.random.default_rng(0))
    assert other != high


def test_loud_means_active(tiny: SyntheticEmotionCorpus) -> None:
    """Measured on the audio: activation correlates with level within each speaker."""
    corr = []
    for speaker in {r.speaker for r in tiny.records}:
        idx = [i for i, r in enumerate(tiny.records) if r.speaker == speaker]
        rms_db = [20 * np.log10(np.sqrt(np.mean(tiny.wave(i) ** 2))) for i in idx]
        corr.append(np.corrcoef(rms_db, tiny.labels(idx)[:, 0])[0, 1])
    assert np.mean(corr) > 0.5


def test_learnable_but_valence_hardest(tiny: SyntheticEmotionCorpus) -> None:
    """Ridge regression on utterance LFBE statistics, leave-one-session-out."""
    feats = [lfbe(torch.from_numpy(tiny.wave(i))).numpy() for i in range(len(tiny))]
    x = np.stack([np.concatenate([f.mean(0), f.std(0)]) for f in feats])
    y = tiny.labels()
    sessions = np.array([r.session for r in tiny.records])
    pred = np.zeros_like(y)
    for s in range(1, 6):
        tr, te = sessions != s, sessions == s
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
        a, b = (x[tr] - mu) / sd, (x[te] - mu) / sd
        w = np.linalg.solve(a.T @ a + 10 * np.eye(a.shape[1]), a.T @ (y[tr] - y[tr].mean(0)))
        pred[te] = b @ w + y[tr].mean(0)
    act, val, dom = ccc(torch.from_numpy(pred), torch.from_numpy(y)).tolist()
    assert act > 0.4 and dom > 0.3  # learnable
    assert 0.05 < val < min(act, dom)  # valence hardest, yet above chance
    assert max(act, val, dom) < 0.9  # not trivial


def test_bad_config() -> None:
    with pytest.raises(UserInputError):
        SyntheticEmotionConfig(sessions=1)
    with pytest.raises(UserInputError):
        load_synthetic("huge")
