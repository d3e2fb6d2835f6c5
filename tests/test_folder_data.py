"""A user's own folder of audio: discovery, bad files, the split, and the CLI on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cpc_fast.cli import app
from cpc_fast.data.corpora import detect_format, open_pretrain_corpus
from cpc_fast.data.corpora.folder import find_audio, load_folder
from cpc_fast.errors import UserInputError

SR = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(path: Path, samples: int, rate: int = SR, channels: int = 1, fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.random.default_rng(len(str(path))).standard_normal((samples, channels)) * 0.1
    sf.write(path, wave[:, 0] if channels == 1 else wave, rate, format=fmt)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    _write(root / "a.wav", 8000)
    _write(root / "sub" / "b.flac", 6000)
    _write(root / "sub" / "deeper" / "c.ogg", 7000, fmt="OGG")
    _write(root / "UPPER.WAV", 5000)
    for i in range(8):
        _write(root / "many" / f"u{i:02d}.wav", 4000 + 100 * i)
    (root / "notes.txt").write_text("not audio")
    _write(root / "bad" / "rate.wav", 4000, rate=44100)
    _write(root / "bad" / "stereo.flac", 4000, channels=2)
    _write(root / "bad" / "empty.wav", 0)
    (root / "bad" / "corrupt.ogg").write_bytes(b"OggS" + bytes(range(200)))
    _write(root / "bad" / "short.wav", 80)
    return root


def test_finds_audio_recursively_in_any_case(tree) -> None:
    found = [p.relative_to(tree).as_posix() for p in find_audio(tree)]
    assert "UPPER.WAV" in found and "sub/deeper/c.ogg" in found and "notes.txt" not in found
    assert found == sorted(found) and len(found) == 4 + 8 + 5
    assert find_audio(tree / "a.wav") == [tree / "a.wav"]
    with pytest.raises(UserInputError, match=r"not an audio file \(.wav, .flac, .ogg"):
        find_audio(tree / "notes.txt")


def test_bad_files_are_skipped_with_reasons(tree) -> None:
    warnings: list[str] = []
    train, valid = load_folder(tree, valid_fraction=0.0, warn=warnings.append)
    assert len(train) == 14 and len(valid) == 0
    reasons = {Path(s.path).name: s.reason for s in train.skipped}
    assert reasons.keys() == {"empty.wav", "corrupt.ogg", "short.wav"}
    assert reasons["empty.wav"] == "empty (no samples)"
    assert reasons["corrupt.ogg"].startswith("unreadable")
    assert reasons["short.wav"].startswith("too short: 80 samples")
    assert len(warnings) == 3 and all(w.startswith("skipping ") for w in warnings)
    # another rate or several channels: usable, converted when read, counted once
    ids = [i.utterance_id for i in train.items]
    assert train.items[ids.index("bad/rate")].num_samples == round(4000 * 16000 / 44100)
    assert train[ids.index("bad/rate")].shape == (round(4000 * 16000 / 44100),)
    assert train[ids.index("bad/stereo")].shape == (4000,)
    assert train.conversions.summary() == (
        "2 of 14 audio files converted to 16000 Hz mono when read "
        "(resampled 1 from 44100 Hz; averaged to mono 1 from 2 channels)"
    )
    assert {i.speaker for i in train.items} == {None}
    assert train.items[0].utterance_id == "UPPER"  # the path below the root, no suffix
    wave = train[[i.utterance_id for i in train.items].index("sub/deeper/c")]
    assert wave.dtype == np.float32 and wave.shape == (7000,)


def test_strict_and_empty_folders(tree, tmp_path) -> None:
    with pytest.raises(UserInputError, match=r"bad/(corrupt\.ogg|empty\.wav|rate\.wav)"):
        load_folder(tree, strict=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no audio files in this folder tree"):
        load_folder(tmp_path / "empty")
    only_bad = tmp_path / "only_bad"
    _write(only_bad / "x.wav", 60, rate=8000)  # 120 samples at 16 kHz: under one frame
    with pytest.raises(UserInputError, match=r"no usable training files \(1 skipped\)"):
        load_folder(only_bad)


def test_split_by_path_hash(tree) -> None:
    train, valid = load_folder(tree, valid_fraction=0.4)
    names = {i.utterance_id for i in train.items} | {i.utterance_id for i in valid.items}
    assert len(names) == 14 and len(valid) > 0
    again_train, again_valid = load_folder(tree, valid_fraction=0.4)
    assert [i.path for i in again_valid.items] == [i.path for i in valid.items]


def test_one_file_folder_trains_on_it(tmp_path) -> None:
    _write(tmp_path / "one" / "x.wav", 4000)
    train, valid = load_folder(tmp_path / "one", valid_fraction=0.99)
    assert len(train) == 1 and len(valid) == 0


def test_format_detection_and_options(tree) -> None:
    assert detect_format(tree) == "folder"
    train, _, resolved = open_pretrain_corpus(path=str(tree))
    assert resolved.format == "folder" and Path(resolved.path).is_absolute() and len(train) > 0
    with pytest.raises(UserInputError, match="apply to LibriSpeech"):
        open_pretrain_corpus(path=str(tree), max_minutes_per_speaker=5)
    with pytest.raises(UserInputError, match="drop `path`"):
        open_pretrain_corpus(path=str(tree), format="synthetic")


def test_cli_on_a_folder(tree, tmp_path) -> None:
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(tree), "--format", "folder", "--preset", "tiny"]
    args += ["--max-steps", "2", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: skipping") == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_files_indexing"] == 3 and summary["steps"] == 2
