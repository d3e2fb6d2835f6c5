"""The commands on audio as people have it, made here with soundfile: 44.1 kHz stereo WAVs,
48 kHz FLACs, an MP3, and a manifest that mixes them with 16 kHz mono files. Nothing is
skipped, and what was converted is reported once per run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_runner import DecoderCalls, run_main

from cpc_fast.data.speech_synth import synthesize, voice_for_speaker

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["pretrain", "--preset", "tiny", "--max-steps", "2", "--valid-fraction", "0"]


def _speech(seconds: float, rate: int, seed: int) -> np.ndarray:
    """(n,) float64 speech-like audio rendered at ``rate``."""
    voice = voice_for_speaker(str(seed % 3))
    return synthesize(seconds, voice, rng=np.random.default_rng(seed), sample_rate=rate)


def write_mixed_folder(folder: Path, seconds: float = 1.0) -> dict[str, Path]:
    """3 44.1 kHz stereo WAVs, 2 48 kHz FLACs, a 44.1 kHz mono MP3 and a 16 kHz mono WAV."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(3):
        wave = _speech(seconds, 44100, i)
        files[f"stereo{i}.wav"] = np.stack([wave, 0.5 * wave], axis=1), 44100, {}
    for i in range(2):
        files[f"high{i}.flac"] = _speech(seconds, 48000, 10 + i), 48000, {}
    files["talk.mp3"] = _speech(seconds, 44100, 20), 44100, {"format": "MP3"}
    files["plain.wav"] = _speech(seconds, 16000, 30), 16000, {"subtype": "PCM_16"}
    paths = {}
    for name, (wave, rate, kwargs) in files.items():
        paths[name] = folder / name
        sf.write(paths[name], wave, rate, **kwargs)
    return paths


CONVERTED = (
    "6 of 7 audio files converted to 16000 Hz mono when read (resampled 4 from 44100 Hz, "
    "2 from 48000 Hz; averaged to mono 3 from 2 channels)"
)


def test_pretrain_on_a_folder_of_mixed_rates_channels_and_formats(tmp_path, capsys) -> None:
    data = tmp_path / "audio"
    write_mixed_folder(data)
    code, out, err = run_main([*TINY, "--data", str(data), "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert "skipping" not in err
    assert (out + err).count("converted to 16000 Hz mono") == 1
    assert CONVERTED in out + err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_files_indexing"] == 0
    assert summary["skipped_files_reading"] == 0


def test_experiment_on_a_manifest_mixing_rates(tmp_path, capsys, monkeypatch) -> None:
    data = tmp_path / "data"
    paths = write_mixed_folder(data, seconds=0.5)
    for i in range(5):  # more 16 kHz utterances, so that each split has a few
        sf.write(data / f"more{i}.wav", _speech(0.5, 16000, 40 + i), 16000)
        paths[f"more{i}.wav"] = data / f"more{i}.wav"
    rows = ["path,activation,valence,dominance,split,speaker"]
    for k, name in enumerate(sorted(paths)):
        split = "test" if k % 4 == 3 else "train"
        rows.append(f"{name},{1 + k % 5},{1 + (k * 2) % 5},{1 + (k * 3) % 5},{split},s{k % 3}")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    args = ["experiment", "--dataset", "manifest", "--root", str(data / "manifest.csv")]
    args += ["--preset", "tiny", "--setups", "sup", "--runs", "1", "--epochs", "1"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    calls = DecoderCalls(monkeypatch)
    code, out, err = run_main([*args, "--out", str(tmp_path / "exp")], capsys)
    assert code == 0, err
    assert err.count("converted to 16000 Hz mono") == 1
    assert CONVERTED.replace("6 of 7", "6 of 12") in err
    predictions = (tmp_path / "exp" / "sup" / "official" / "run1" / "predictions.csv").read_text()
    assert predictions.count("\n") == 1 + sum(1 for r in rows[1:] if ",test," in r)
    # its decoding pass prepared the corpus once: another experiment on it decodes nothing
    assert calls.count == 12 and "prepared 12 files" in err
    calls.count = 0
    code, out, err = run_main([*args, "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    assert calls.count == 0 and "nothing to decode" in err
