"""IEMOCAP parsing on a fixture in the public layout, and the leave-one-session-out folds."""

from __future__ import annotations

from pathlib import Path

import pytest
from emotion_fixtures import iemocap_block, make_iemocap, write_wav

from cpc_fast.data.corpora.iemocap import load_iemocap
from cpc_fast.errors import UserInputError


def test_parses_labels_speakers_and_paths(tmp_path: Path) -> None:
    expected = make_iemocap(tmp_path, sessions=(1, 2))
    corpus = load_iemocap(tmp_path, subset="all")
    by_id = {r.utt_id: r for r in corpus.records}
    assert set(by_id) == set(expected)  # annotator lines, Categorical/, ._* ignored
    for utt, labels in expected.items():
        assert by_id[utt].labels == pytest.approx(labels)  # [V, A, D] reordered to (A, V, D)
    script = by_id["Ses02M_script01_1_F000"]
    assert script.session == 2 and script.speaker == "Ses02F"  # gender of the LAST field
    assert (
        script.path
        == tmp_path / "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F000.wav"
    )
    impro = by_id["Ses01F_impro01_M001"]
    assert impro.session == 1 and impro.speaker == "Ses01M" and impro.emotion == "ang"
    assert impro.source.endswith("Ses01F_impro01.txt:9")


def test_subsets(tmp_path: Path) -> None:
    make_iemocap(tmp_path, sessions=(1,))
    paper = load_iemocap(tmp_path)  # default: neu, hap, exc, ang, sad
    assert {r.emotion for r in paper.records} == {"neu", "ang", "sad", "hap", "exc"}
    assert len(load_iemocap(tmp_path, subset="all")) == len(paper) + 2  # + the two 'fru'
    assert {r.emotion for r in load_iemocap(tmp_path, subset="ang,sad").records} == {"ang", "sad"}


def test_bad_rows_are_listed(tmp_path: Path) -> None:
    make_iemocap(tmp_path, sessions=(1,))
    label_file = tmp_path / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    extra = (
        iemocap_block("Ses01F_impro01_F090", "neu", (2.0, 9.0, 2.0))  # out of range
        + iemocap_block("Ses01F_impro01_M091", "ang", (2.0, 3.0, 2.0))  # no audio file
        + "[1.0 - 2.0]\tSes01F_impro01_F092\tsad\t[2.0, x, 2.0]\n"  # not a number
    )
    label_file.write_text(label_file.read_text() + extra)
    wav_dir = tmp_path / "Session1/sentences/wav/Ses01F_impro01"
    write_wav(wav_dir / "Ses01F_impro01_F090.wav")
    write_wav(wav_dir / "Ses01F_impro01_F092.wav")
    (wav_dir / "Ses01F_impro01_F000.wav").write_bytes(b"RIFF not really a wav")  # unreadable
    with pytest.raises(UserInputError) as err:
        load_iemocap(tmp_path)
    message = str(err.value)
    assert "4 bad row(s)" in message and "`skip_bad=True`" in message
    for needle in (
        "Ses01F_impro01_F090: bad label value",
        "Ses01F_impro01_M091.wav does not exist",
        "Ses01F_impro01_F092: bad label value",
        "unreadable audio",
    ):
        assert needle in message
    assert f"{label_file}:" in message  # rows are named file:line
    corpus = load_iemocap(tmp_path, skip_bad=True)
    assert len(corpus.skipped) == 4
    assert "Ses01F_impro01_F000" not in {r.utt_id for r in corpus.records}


def test_other_sample_rates_are_converted_and_counted(tmp_path: Path) -> None:
    make_iemocap(tmp_path, sessions=(1,))
    path = tmp_path / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    write_wav(path, 0.25, sr=8000, channels=2)
    corpus = load_iemocap(tmp_path)
    index = [r.utt_id for r in corpus.records].index("Ses01F_impro01_F000")
    assert corpus.wave(index).shape == (4000,)  # 0.25 s at 16 kHz, mono
    assert "resampled 1 from 8000 Hz; averaged to mono 1 from 2 channels" in (
        corpus.conversions.summary()
    )
    write_wav(path, 0.006, sr=8000)  # 48 samples, 96 at 16 kHz: under one 10 ms frame
    with pytest.raises(UserInputError, match="96 samples at 16 kHz, less than one 10 ms frame"):
        load_iemocap(tmp_path)


def test_not_an_iemocap_root(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="IEMOCAP_full_release"):
        load_iemocap(tmp_path)


@pytest.mark.parametrize("validation", ["speaker", "random"])
def test_leave_one_session_out(tmp_path: Path, validation: str) -> None:
    make_iemocap(tmp_path, sessions=(1, 2, 3))
    corpus = load_iemocap(tmp_path)
    folds = corpus.folds(validation)
    assert [f.name for f in folds] == ["fold1", "fold2", "fold3"]
    for k, fold in enumerate(folds):
        sessions = {corpus.records[i].session for i in fold.test}
        assert sessions == {k + 1}
        assert not set(fold.train) & set(fold.validation)
        assert set(fold.train) | set(fold.validation) | set(fold.test) == set(range(len(corpus)))
        assert all(corpus.records[i].session != k + 1 for i in fold.train + fold.validation)
        if validation == "speaker":
            speakers = {corpus.records[i].speaker for i in fold.validation}
            assert len(speakers) == 1 and speakers.pop().startswith(f"Ses{(k + 1) % 3 + 1:02d}")
    assert corpus.folds(validation) == folds  # deterministic
