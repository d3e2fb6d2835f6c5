"""MSP-Podcast parsing: both label-file spellings, Validation vs Development, test sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from emotion_fixtures import make_msp, msp_rows

from cpc_fast.data.corpora.msp_podcast import load_msp_podcast
from cpc_fast.errors import UserInputError


@pytest.mark.parametrize("spelling", ["labels_consensus.csv", "labels_concensus.csv"])
def test_both_spellings_and_development(tmp_path: Path, spelling: str) -> None:
    rows = msp_rows(3)
    make_msp(tmp_path, rows, spelling=spelling)
    corpus = load_msp_podcast(tmp_path)
    assert len(corpus) == 9  # Train, Development, Test1; Test2 ignored
    assert "3 rows of other test sets unused" in corpus.description
    splits = {r.utt_id: r.split for r in corpus.records}
    for name, *_rest, split in rows:
        expected = {"Train": "train", "Development": "validation", "Test1": "test"}.get(split)
        assert splits.get(name) == expected
    first = corpus.records[0]
    name, emo, act, val, dom, spk, _, _ = rows[0]
    assert first.labels == (float(act), float(val), float(dom))
    assert first.emotion == emo and first.speaker == spk
    assert first.path == tmp_path / "Audios" / name
    fold = corpus.folds()[0]
    assert fold.name == "official" and len(fold.train) == 3 and len(fold.validation) == 3


def test_validation_spelling_and_test2(tmp_path: Path) -> None:
    rows = [r[:7] + ("Validation" if r[7] == "Development" else r[7],) for r in msp_rows(2)]
    make_msp(tmp_path, rows)
    corpus = load_msp_podcast(tmp_path, test_set="Test2")
    fold = corpus.folds()[0]
    assert len(fold.validation) == 2
    assert {corpus.records[i].utt_id for i in fold.test} == {r[0] for r in rows if r[7] == "Test2"}


def test_bad_rows_listed_then_skipped(tmp_path: Path) -> None:
    rows = msp_rows(2)
    rows[0] = rows[0][:2] + ("8",) + rows[0][3:]  # EmoAct outside 1-7
    rows[1] = rows[1][:3] + ("nan",) + rows[1][4:]
    rows[2] = rows[2][:7] + ("Tset1",)
    label_file = make_msp(tmp_path, rows)
    (tmp_path / "Audios" / rows[3][0]).unlink()
    with pytest.raises(UserInputError) as err:
        load_msp_podcast(tmp_path)
    message = str(err.value)
    assert "4 bad row(s)" in message
    for line in (2, 3, 4, 5):
        assert f"{label_file}:{line}:" in message
    assert "outside [1, 7]" in message and "not finite" in message and "Tset1" in message
    corpus = load_msp_podcast(tmp_path, skip_bad=True)
    assert len(corpus.skipped) == 4 and len(corpus) == 2  # 8 rows, 4 bad, 2 of Test2


def test_missing_labels_or_columns(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="labels_consensus.csv"):
        load_msp_podcast(tmp_path)
    (tmp_path / "Labels").mkdir()
    (tmp_path / "Labels" / "labels_consensus.csv").write_text("FileName,EmoAct\nx.wav,3\n")
    with pytest.raises(UserInputError, match="missing column"):
        load_msp_podcast(tmp_path)
