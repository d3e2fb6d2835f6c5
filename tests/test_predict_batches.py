"""Batched ``cpc-fast predict``: files, folders (recursively) and manifests in, CSV or JSON
lines out, each file's prediction what the file gives alone; bad files named and skipped;
the batches' plan; the padded CPC batch that makes batching exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_runner import one_error_line, run_main
from optional_deps import need

from cpc_fast.emotion.batch_predict import plan_batches
from cpc_fast.emotion.model_io import EmotionModel, load_model
from cpc_fast.emotion.onnx_export import ONNX_NAME, export_emotion_onnx
from cpc_fast.features.lfbe import LFBE
from cpc_fast.io.cpus import available_cpus
from cpc_fast.models.cpc import CPCConfig, CPCModel
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCALER = {"mean": [3.0, 2.6, 3.2], "std": [0.7, 0.8, 0.9]}
SECONDS = {"a.wav": 1.2, "b/c.wav": 0.45, "b/d/e.flac": 3.1, "b/f.wav": 0.2, "g.wav": 2.05}


def _model(setup: str) -> EmotionModel:
    torch.manual_seed(0)
    if setup == "sup":
        front_end, features, dim = LFBE(), {"kind": "lfbe", "lfbe": {}}, 40
    else:
        front_end = CPCModel(CPCConfig(encoder_dim=16, context_dim=16, encoder_norm="channel"))
        features, dim = {"kind": "cpc", "cpc": {"path": "?", "digest": "?"}}, 16
    recognizer = EmotionRecognizer(RecognizerConfig(input_dim=dim))
    recognizer.set_input_normalization(torch.randn(dim), torch.rand(dim) + 0.5)
    config = {
        "setup": setup,
        "features": features,
        "recognizer": recognizer.config.to_dict(),
        "label_scaler": SCALER,
        "label_range": [1.0, 5.0],
    }
    return EmotionModel(recognizer, config, front_end.eval()).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for setup in ("sup", "pre"):
        folders[setup] = root / setup
        _model(setup).save_pretrained(folders[setup])
    return folders


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, seconds in SECONDS.items():
        path = tmp_path / "audio" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        subtype = "PCM_24" if path.suffix == ".flac" else "FLOAT"
        sf.write(path, 0.1 * rng.standard_normal(int(seconds * 16000)), 16000, subtype=subtype)
    return tmp_path / "audio"


def _alone(model_folder: Path, files: list[Path]) -> dict[str, np.ndarray]:
    model = load_model(model_folder)
    return {str(f): model.predict(sf.read(f, dtype="float32")[0]) for f in files}


@pytest.mark.parametrize("setup", ["sup", "pre"])
def test_folders_and_manifests_in_csv_and_jsonl_out(
    models: Path, audio: Path, tmp_path: Path, capsys, setup: str
) -> None:
    (audio / "list.txt").write_text("# clips\na.wav\nb/c.wav\n")
    with open(audio / "m.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "activation"], ["g.wav", "3"], ["b/d/e.flac", "2"]])
    out = tmp_path / "out.csv"
    args = ["predict", "--model", str(models[setup]), str(audio / "b"), str(audio / "list.txt")]
    args += [str(audio / "m.csv"), "--output", str(out), "--batch-size", "3"]
    code, stdout, err = run_main(args, capsys)
    assert code == 0, err
    assert stdout == ""
    # the folder's files (sorted), then each manifest's, in the order given
    names = ["b/c.wav", "b/d/e.flac", "b/f.wav", "a.wav", "b/c.wav", "g.wav", "b/d/e.flac"]
    files = [audio / n for n in names]
    first = err.splitlines()[0]
    seconds = sum(SECONDS[n] for n in names)
    assert first.startswith(f"predict: 7 file(s), {seconds:.1f} s of audio, on ")
    assert f"on {available_cpus()} CPU thread(s)" in first
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [str(f) for f in files]
    expected = _alone(models[setup], files)
    for row in rows:
        got = [float(row[d]) for d in ("activation", "valence", "dominance")]
        np.testing.assert_allclose(got, expected[row["file"]], atol=1e-5, rtol=0)
        assert row["error"] == ""
    # JSON lines on stdout, one thread asked for
    args = ["predict", "--model", str(models[setup]), str(audio), "--format", "jsonl"]
    code, stdout, err = run_main([*args, "--threads", "1", "-q"], capsys)
    assert code == 0 and err == ""
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(audio / n) for n in sorted(SECONDS)]
    assert torch.get_num_threads() == 1  # one_torch_thread's, as predict found it


def test_bad_files_are_named_and_skipped_with_skip_bad(models: Path, audio: Path, capsys) -> None:
    (audio / "b" / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really")
    sf.write(audio / "short.wav", np.zeros(100), 16000, subtype="FLOAT")
    args = ["predict", "--model", str(models["sup"]), str(audio), "--format", "jsonl"]
    code, _, err = run_main(args, capsys)
    line = one_error_line(code, err)
    assert str(audio / "b" / "broken.wav") in line and "--skip-bad" in line
    code, stdout, err = run_main([*args, "--skip-bad"], capsys)
    assert code == 0, err
    assert f"skipping {audio / 'b' / 'broken.wav'}" in err
    assert f"{audio / 'short.wav'}: audio of 100 samples is shorter than one 10 ms frame" in err
    assert "2 of 7 file(s) skipped" in err
    rows = {r["file"]: r for r in map(json.loads, stdout.splitlines())}
    assert rows[str(audio / "short.wav")]["activation"] is None
    assert "error" in rows[str(audio / "b" / "broken.wav")]
    assert all(isinstance(rows[str(audio / n)]["valence"], float) for n in SECONDS)


def test_onnxruntime_runtime_gives_the_same_predictions(
    models: Path, audio: Path, tmp_path: Path, capsys
) -> None:
    need("onnxruntime")
    need("onnx")
    folder = tmp_path / "pre"
    folder.mkdir()
    for path in models["pre"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    export_emotion_onnx(load_model(folder), folder / ONNX_NAME)
    outputs = []
    for runtime in ("torch", "onnxruntime"):
        args = ["predict", "--model", str(folder), str(audio), "--format", "json", "-q"]
        code, stdout, err = run_main([*args, "--runtime", runtime], capsys)
        assert code == 0, err
        outputs.append(
            [[r[d] for d in ("activation", "valence", "dominance")] for r in json.loads(stdout)]
        )
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-4, rtol=0)
    code, _, err = run_main(
        ["predict", "--model", str(models["sup"]), str(audio), "--runtime", "onnxruntime"], capsys
    )
    assert f"no {ONNX_NAME}; write one with cpc-fast export" in one_error_line(code, err)


def test_plan_batches() -> None:
    lengths = [16000 * s for s in (3, 1, 7, 2, 5, 9, 4, 1000, 6)]
    batches = plan_batches(lengths, max_items=3, max_samples=16000 * 20)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [7] in batches  # a file longer than a batch may hold runs alone
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 16000 * 20
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert batches[0] == [7]  # longest first: a batch too big for memory fails at once


@pytest.mark.parametrize("blocks", [True, False], ids=["block-gemm", "conv1d"])
def test_a_padded_cpc_batch_gives_each_row_its_own_frames(blocks: bool) -> None:
    """With lengths, every encoder layer's frames past a row's end are zeroed, so the rows
    of a zero-padded batch equal the rows alone (without them, the last frames differ)."""
    torch.manual_seed(0)
    model = CPCModel(CPCConfig(encoder_dim=16, context_dim=12, encoder_norm="channel")).eval()
    model.encoder.blocks = blocks
    lengths = torch.tensor([5000, 3200, 161, 4733])
    wave = torch.randn(4, 5000) * (torch.arange(5000) < lengths[:, None])
    with torch.inference_mode():
        z, c = model.encode(wave, lengths), model.context(wave, lengths)
        unmasked = model.encode(wave)
        for b, n in enumerate(lengths.tolist()):
            frames = n // 160
            alone = wave[b : b + 1, :n]
            torch.testing.assert_close(z[b, :frames], model.encode(alone)[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(c[b, :frames], model.context(alone)[0], atol=1e-5, rtol=0)
            assert not z[b, frames:].any()
        assert not torch.allclose(unmasked[1, :20], z[1, :20])  # 3200 samples: 20 frames


@pytest.mark.parametrize("setup", ["sup", "pre"])
def test_the_whole_padded_batch_path_equals_the_rows(setup: str) -> None:
    """What a GPU runs (and the ONNX graph holds): the front end and the recognizer on the
    masked, padded batch; on a CPU ``predict_batch`` runs them row by row. Both agree."""
    model = _model(setup)
    lengths = torch.tensor([16000, 7777, 3200, 161])
    wave = torch.randn(4, 16000) * (torch.arange(16000) < lengths[:, None])
    with torch.inference_mode():
        features, frames = model.frames(wave, lengths)
        batched = model.recognizer(features, frames)
        rows = model.scaled(wave, lengths)  # on a CPU: row by row
    assert frames.tolist() == [100, 48, 20, 1]
    torch.testing.assert_close(batched, rows, atol=1e-5, rtol=0)
