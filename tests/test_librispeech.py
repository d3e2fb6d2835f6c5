"""LibriSpeech indexing on a tiny fixture tree in the real layout, bad files included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cpc_fast.cli import app, main
from cpc_fast.config.pretrain import tiny
from cpc_fast.data.corpora import detect_format
from cpc_fast.data.corpora.librispeech import (
    cap_minutes,
    load_librispeech,
    looks_like_librispeech,
    read_speakers_txt,
    resolve_subsets,
)
from cpc_fast.data.file_index import is_validation
from cpc_fast.errors import UserInputError
from cpc_fast.training.pretrain import pretrain

SR = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SPEAKERS_TXT = """\
; LibriSpeech speakers (an excerpt in the real format)
;ID  |SEX| SUBSET           |MINUTES| NAME
14   | F | train-clean-360  | 25.03 | Kristin LeMoine
19   | F | train-clean-100  | 25.19 | Kara Shallenberg
26   | M | train-clean-100  | 25.08 | Denny Sayers
32   | F | train-clean-100  | 25.05 | Betsie Bush
60   | M | train-clean-100  | 20.18 | |CBW|Simon
"""
# (speaker, chapter, utterances, seconds each)
GOOD = [("19", "198", 5, 0.5), ("19", "227", 3, 0.7), ("26", "495", 4, 0.4), ("32", "4137", 6, 0.3)]
BAD = {
    "26/495/26-495-0010.flac": "too short: 120 samples at 16000 Hz",  # 60 at 8 kHz
    "26/495/26-495-0011.flac": "too short: 145 samples at 16000 Hz",  # 100 at 11025 Hz
    "32/4137/32-4137-0010.flac": "unreadable",  # 0 bytes
    "32/4137/32-4137-0011.flac": "unreadable",  # garbage bytes
    "32/4137/32-4137-0012.flac": "too short: 100 samples",
}


def _write(path: Path, samples: int, rate: int = SR, channels: int = 1, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.random.default_rng(seed).standard_normal((samples, channels)) * 0.1
    sf.write(path, wave.squeeze(1) if channels == 1 else wave, rate, format="FLAC")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ls")
    libri = root / "LibriSpeech"
    subset = libri / "train-clean-100"
    for n, (spk, chapter, count, seconds) in enumerate(GOOD):
        for u in range(count):
            _write(
                subset / spk / chapter / f"{spk}-{chapter}-{u:04d}.flac", int(seconds * SR), seed=n
            )
        (subset / spk / chapter / f"{spk}-{chapter}.trans.txt").write_text("TEXT\n")
    _write(subset / "26/495/26-495-0010.flac", 60, rate=8000)
    _write(subset / "26/495/26-495-0011.flac", 100, rate=11025, channels=2)
    (subset / "32/4137/32-4137-0010.flac").write_bytes(b"")
    (subset / "32/4137/32-4137-0011.flac").write_bytes(b"\x00garbage" * 50)
    _write(subset / "32/4137/32-4137-0012.flac", 100)
    _write(subset / "19/198/stray.flac", 4000)  # not in the naming scheme: ignored
    _write(libri / "dev-clean" / "84" / "121123" / "84-121123-0000.flac", 4000)
    (libri / "SPEAKERS.TXT").write_text(SPEAKERS_TXT)
    return root


def test_speakers_txt(corpus) -> None:
    speakers = read_speakers_txt(corpus / "LibriSpeech" / "SPEAKERS.TXT")
    assert sorted(speakers) == ["14", "19", "26", "32", "60"]
    assert speakers["26"].sex == "M" and speakers["19"].name == "Kara Shallenberg"
    assert speakers["60"].name == "|CBW|Simon"  # '|' inside a name
    assert speakers["32"].minutes == pytest.approx(25.05)
    assert speakers["14"].subset == "train-clean-360"


def test_malformed_speakers_txt(tmp_path) -> None:
    bad = tmp_path / "SPEAKERS.TXT"
    bad.write_text(";ID|SEX\n19 | F | train-clean-100\n")
    with pytest.raises(UserInputError, match=r"SPEAKERS.TXT, line 2"):
        read_speakers_txt(bad)


def test_every_root_form_finds_the_same_subset(corpus) -> None:
    subset = corpus / "LibriSpeech" / "train-clean-100"
    for root in (corpus, corpus / "LibriSpeech", subset):
        assert resolve_subsets(root) == [subset]
        assert looks_like_librispeech(root) and detect_format(root) == "librispeech"
    assert resolve_subsets(corpus, "dev-clean,train-clean-100") == [
        corpus / "LibriSpeech" / "dev-clean",
        subset,
    ]
    with pytest.raises(UserInputError, match="no subset train-other-500"):
        resolve_subsets(corpus, "train-other-500")
    assert not looks_like_librispeech(subset / "19" / "198")


def test_index_skips_bad_files_with_one_warning_each(corpus) -> None:
    warnings: list[str] = []
    data = load_librispeech(corpus, valid_fraction=0.0, warn=warnings.append)
    ids = [item.utterance_id for item in data.train.items]
    expected = [f"{s}-{c}-{u:04d}" for s, c, n, _ in GOOD for u in range(n)]
    assert ids == sorted(expected)
    assert len(data.valid) == 0
    assert data.train.speakers == ["19", "26", "32"]
    assert {item.speaker for item in data.train.items if item.utterance_id.startswith("26-")} == {
        "26"
    }
    assert data.speakers["19"].sex == "F"
    skipped = {
        Path(s.path).relative_to(corpus / "LibriSpeech/train-clean-100").as_posix(): s.reason
        for s in data.train.skipped
    }
    assert skipped.keys() == BAD.keys()
    for rel, reason in BAD.items():
        assert reason in skipped[rel]
    assert len([w for w in warnings if w.startswith("skipping ")]) == len(BAD)
    assert any("ignoring" in w and "stray.flac" in w for w in warnings)
    wave = data.train[0]
    assert wave.dtype == np.float32 and wave.shape == (data.train.items[0].num_samples,)
    assert data.train.seconds == pytest.approx(sum(n * s for _, _, n, s in GOOD))


def test_strict_stops_at_the_first_bad_file(corpus) -> None:
    with pytest.raises(UserInputError, match=r"26-495-0010\.flac: too short: 120 samples"):
        load_librispeech(corpus, strict=True)


def test_validation_split_is_a_stable_hash(corpus) -> None:
    a = load_librispeech(corpus, valid_fraction=0.3)
    b = load_librispeech(corpus / "LibriSpeech" / "train-clean-100", valid_fraction=0.3)
    train_ids = [i.utterance_id for i in a.train.items]
    valid_ids = [i.utterance_id for i in a.valid.items]
    assert train_ids == [i.utterance_id for i in b.train.items]
    assert valid_ids == [i.utterance_id for i in b.valid.items]
    assert valid_ids and not set(train_ids) & set(valid_ids)
    assert all(is_validation(u, 0.3) for u in valid_ids)
    assert not any(is_validation(u, 0.3) for u in train_ids)
    share = np.mean([is_validation(f"{i}-1-{j}", 0.02) for i in range(100) for j in range(100)])
    assert share == pytest.approx(0.02, abs=0.004)


def test_minutes_cap_per_speaker(corpus) -> None:
    cap = 1.6 / 60  # 1.6 s per speaker
    capped = load_librispeech(corpus, valid_fraction=0.0, max_minutes_per_speaker=cap)
    full = load_librispeech(corpus, valid_fraction=0.0)
    # Independent reference: walk each speaker's utterances in id order.
    expected, used = [], {}
    for item in sorted(full.train.items, key=lambda i: i.utterance_id):
        if used.get(item.speaker, 0.0) + item.num_samples / SR <= 1.6 + 1e-9:
            used[item.speaker] = used.get(item.speaker, 0.0) + item.num_samples / SR
            expected.append(item.utterance_id)
    assert [i.utterance_id for i in capped.train.items] == expected
    assert [i.utterance_id for i in cap_minutes(full.train.items, cap, SR)] == expected
    # 19: 3 x 0.5 s; 26: 4 x 0.4 s; 32: 5 x 0.3 s.
    assert [sum(1 for u in expected if u.startswith(s + "-")) for s in ("19", "26", "32")] == [
        3,
        4,
        5,
    ]


def test_file_that_breaks_after_indexing_is_skipped_at_read_time(corpus, tmp_path) -> None:
    data = load_librispeech(corpus, valid_fraction=0.0)
    # Point one item at a missing file: reading it fails in the loop, not at indexing.
    broken = data.train.items[3]
    data.train.items[3] = type(broken)(str(tmp_path / "gone.flac"), broken.utterance_id, "19", 1)
    cfg = tiny().replace(window_seconds=0.32, batch_size=6, max_steps=3, workers=2)
    run = pretrain(cfg, data.train, None, tmp_path / "run", progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_files_reading"] == 1  # 18 items: one epoch of 3 steps
    assert summary["skipped_files_indexing"] == len(BAD)


def test_cli_on_librispeech(corpus, tmp_path) -> None:
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(corpus), "--preset", "tiny", "--max-steps", "2"]
    args += ["--max-minutes-per-speaker", "1", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: skipping") == len(BAD)
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["data"]["format"] == "librispeech"
    assert config["config"]["data"]["max_minutes_per_speaker"] == 1.0
    assert json.loads((out / "summary.json").read_text())["skipped_files_indexing"] == len(BAD)


def test_cli_strict_is_one_line(corpus, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--data", str(corpus), "--out", str(tmp_path / "r"), "--strict"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and "26-495-0010.flac: too short: 120 samples" in errors[0]
