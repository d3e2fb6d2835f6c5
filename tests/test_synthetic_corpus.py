"""The built-in unlabeled corpus: reproducible per index, multi-speaker, held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from cpc_fast.data.corpora import synthetic_speech
from cpc_fast.data.corpora.synthetic_speech import SyntheticSpeechCorpus
from cpc_fast.errors import UserInputError


def test_items_are_reproducible_in_any_order() -> None:
    corpus = SyntheticSpeechCorpus(3, 4, seconds=(0.3, 0.8), seed=2)
    assert len(corpus) == 12
    forward = [corpus[i] for i in range(12)]
    backward = [corpus[i] for i in reversed(range(12))][::-1]
    for a, b in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(a, b)
    other_seed = SyntheticSpeechCorpus(3, 4, seconds=(0.3, 0.8), seed=3)
    assert not np.array_equal(forward[0][:4000], other_seed[0][:4000])
    for i, wave in enumerate(forward):
        assert wave.dtype == np.float32 and np.isfinite(wave).all()
        assert wave.shape == (round(corpus.duration(i) * 16000),)
        assert 0.3 <= corpus.duration(i) <= 0.8
    assert corpus[-1].shape == forward[-1].shape
    with pytest.raises(IndexError):
        corpus[12]


def test_speakers_and_held_out_utterances() -> None:
    corpus = SyntheticSpeechCorpus(4, 3, seconds=(0.5, 0.5), seed=0)
    assert corpus.speakers == ["synth-000", "synth-001", "synth-002", "synth-003"]
    assert [corpus.speaker_of(i) for i in (0, 2, 3, 11)] == [
        "synth-000",
        "synth-000",
        "synth-001",
        "synth-003",
    ]
    # Speakers alternate male / female voices.
    assert all(v.f0_hz < 160 for v in corpus.voices[0::2])
    assert all(v.f0_hz > 160 for v in corpus.voices[1::2])
    held = corpus.held_out(2)
    assert len(held) == 8 and held.speakers == corpus.speakers and held.voices == corpus.voices
    train_ids = {corpus.utterance_id(i) for i in range(len(corpus))}
    held_ids = {held.utterance_id(i) for i in range(len(held))}
    assert not train_ids & held_ids
    assert held.utterance_id(0) == "synth-000-00003"
    assert not any(np.array_equal(held[0], corpus[i]) for i in range(3))


def test_bad_arguments() -> None:
    with pytest.raises(UserInputError):
        SyntheticSpeechCorpus(0, 3)
    with pytest.raises(UserInputError):
        SyntheticSpeechCorpus(2, 3, seconds=(2.0, 1.0))


def test_items_are_kept_within_the_memo_budget(monkeypatch) -> None:
    kept = SyntheticSpeechCorpus(2, 3, seconds=(0.3, 0.5), seed=4)
    first = [kept[i] for i in range(6)]
    assert all(kept[i] is first[i] for i in range(6))  # generated once
    assert kept[-1] is first[5]
    monkeypatch.setattr(synthetic_speech, "MEMO_BYTES", first[0].nbytes + first[1].nbytes)
    bounded = SyntheticSpeechCorpus(2, 3, seconds=(0.3, 0.5), seed=4)
    again = [bounded[i] for i in range(6)]
    assert bounded[0] is again[0] and bounded[1] is again[1]
    assert all(bounded[i] is not again[i] for i in range(2, 6))  # over budget: regenerated
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
