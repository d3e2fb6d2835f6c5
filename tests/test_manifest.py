"""The manifest CSV: relative paths, split aliases, optional columns, bad rows, carving."""

from __future__ import annotations

from pathlib import Path

import pytest
from emotion_fixtures import write_wav

from cpc_fast.data.corpora.manifest import load_manifest
from cpc_fast.errors import UserInputError


def _manifest(
    root: Path,
    rows: list[str],
    header: str = "path,activation,valence,dominance,split,speaker,emotion",
) -> Path:
    path = root / "data" / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_reads_relative_paths_and_aliases(tmp_path: Path) -> None:
    for name in ("a.wav", "b.wav", "sub/c.wav", "d.wav"):
        write_wav(tmp_path / "data" / name)
    absolute = write_wav(tmp_path / "elsewhere" / "e.wav")
    csv_path = _manifest(
        tmp_path,
        [
            "a.wav,1,2,3,train,s1,ang",
            "b.wav,-0.5,0.25,10,TRAIN,s2,",
            "sub/c.wav,4,5,6,dev,s1,sad",
            "d.wav,7,8,9,valid,,",
            f"{absolute},0,0,0,test,s3,neu",
        ],
    )
    corpus = load_manifest(tmp_path / "data")  # a folder holding manifest.csv works too
    assert [r.split for r in corpus.records] == [
        "train",
        "train",
        "validation",
        "validation",
        "test",
    ]
    assert corpus.records[1].labels == (-0.5, 0.25, 10.0)  # any scale is kept
    assert corpus.records[2].path == tmp_path / "data" / "sub" / "c.wav"
    assert corpus.records[4].path == absolute
    assert corpus.records[0].speaker == "s1" and corpus.records[0].emotion == "ang"
    assert corpus.records[1].emotion is None and corpus.records[3].speaker is None
    assert load_manifest(csv_path).records == corpus.records


def test_bad_rows_listed_with_lines(tmp_path: Path) -> None:
    write_wav(tmp_path / "data" / "a.wav")
    write_wav(tmp_path / "data" / "b.wav")
    csv_path = _manifest(
        tmp_path,
        [
            "a.wav,1,2,3,train",
            "missing.wav,1,2,3,train",
            "b.wav,1,two,3,test",
            "a.wav,1,2,3,test",
            "b.wav,1,2,3,holdout",
        ],
        header="path,activation,valence,dominance,split",
    )
    with pytest.raises(UserInputError) as err:
        load_manifest(csv_path)
    message = str(err.value)
    assert "4 bad row(s)" in message
    assert f"{csv_path}:3: audio file" in message and "does not exist" in message
    assert f"{csv_path}:4: b.wav: bad label value" in message
    assert f"{csv_path}:5: a.wav is listed twice" in message
    assert f"{csv_path}:6: split 'holdout'" in message
    corpus = load_manifest(csv_path, skip_bad=True)
    assert len(corpus) == 1 and len(corpus.skipped) == 4


def test_missing_columns(tmp_path: Path) -> None:
    csv_path = _manifest(tmp_path, ["a.wav,1,2,train"], header="path,activation,valence,split")
    with pytest.raises(UserInputError, match="missing column.*dominance"):
        load_manifest(csv_path)


@pytest.mark.parametrize("validation", ["speaker", "random"])
def test_validation_carved_when_absent(tmp_path: Path, validation: str) -> None:
    rows = []
    for k in range(30):
        write_wav(tmp_path / "data" / f"{k}.wav", 0.05, seed=k)
        rows.append(f"{k}.wav,{k % 5},{k % 3},{k % 4},{'test' if k >= 24 else 'train'},spk{k % 4}")
    corpus = load_manifest(
        _manifest(tmp_path, rows, "path,activation,valence,dominance,split,speaker")
    )
    fold = corpus.folds(validation)[0]
    assert len(fold.test) == 6 and len(fold.train) + len(fold.validation) == 24
    assert len(fold.validation) >= 2 and not set(fold.train) & set(fold.validation)
    if validation == "speaker":
        held = {corpus.records[i].speaker for i in fold.validation}
        kept = {corpus.records[i].speaker for i in fold.train}
        assert not held & kept
    assert corpus.folds(validation) == corpus.folds(validation)
