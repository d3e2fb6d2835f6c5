"""Bad data through the real CLI: audio that fails only when read (NaN samples, a header that
promises more than the file holds, 100 samples), other data in a folder that holds a run,
damaged result and cache files, non-finite models and predictions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import one_error_line, run_main
from emotion_fixtures import overstate_wav_data, small_manifest, write_samples, write_wav
from optional_deps import need

from cpc_fast.data.labelled import LabelScaler
from cpc_fast.emotion import model_io
from cpc_fast.emotion.model_io import save_model
from cpc_fast.features.lfbe import LFBEConfig
from cpc_fast.io.checkpoint import load_state
from cpc_fast.models import save_cpc
from cpc_fast.models.cpc import CPCConfig, CPCModel
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["pretrain", "--preset", "tiny", "--no-progress", "--log-every", "2"]
EXPERIMENT = ["experiment", "--dataset", "manifest", "--preset", "tiny", "--setups", "sup"]
EXPERIMENT += ["--runs", "1", "--epochs", "1", "--quiet"]


_main = run_main


def _error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    code, _, err = run_main(args, capsys)
    return one_error_line(code, err)


def _strict_json(text: str):
    return json.loads(text, parse_constant=pytest.fail)  # a bare NaN fails the test


# --------------------------------------------------------------------------- pre-training


def test_a_training_set_with_no_usable_audio_is_an_error(tmp_path, capsys):
    data = tmp_path / "audio"
    write_samples(data / "nan.wav", np.full(16000, np.nan))
    out = tmp_path / "run"
    line = _error([*TINY, "--data", str(data), "--out", str(out)], capsys)
    assert "no usable audio: every training item read (1 in the data set) was skipped" in line
    assert f"the first: {data / 'nan.wav'}: sample 0 is nan" in line
    assert not (out / "model.safetensors").exists() and not (out / "summary.json").exists()


def test_a_header_that_promises_more_than_the_file_holds(tmp_path, capsys):
    data = tmp_path / "audio"
    for k in range(3):
        write_wav(data / f"good{k}.wav", 1.0, seed=k)
    bad = overstate_wav_data(write_wav(data / "cut.wav", 1.0, seed=9), factor=3)
    args = [*TINY, "--data", str(data), "--max-steps", "2", "--valid-fraction", "0"]
    code, _, err = _main([*args, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert f"skipping {bad}: unreadable (the header promises 48000 samples, the file " in err
    summary = _strict_json((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_files_indexing"] == 1
    line = _error([*args, "--strict", "--out", str(tmp_path / "strict")], capsys)
    assert str(bad) in line and "promises 48000 samples, the file holds 16000" in line


def test_pretraining_resumes_only_on_the_same_data(tmp_path, capsys):
    data = tmp_path / "audio"
    for k in range(4):
        write_wav(data / f"{k}.wav", 1.0, seed=k)
    args = [*TINY, "--data", str(data), "--valid-fraction", "0", "--out", str(tmp_path / "run")]
    assert _main([*args, "--max-steps", "2"], capsys)[0] == 0
    write_wav(data / "2.wav", 1.5, seed=2)  # the same file names, other audio
    line = _error([*args, "--max-steps", "4"], capsys)
    assert "different configuration (the train data: other files or contents)" in line
    assert "--restart" in line
    assert _main([*args, "--max-steps", "4", "--restart"], capsys)[0] == 0
    assert load_state(tmp_path / "run" / "state.pt")["step"] == 4


# --------------------------------------------------------------------------- experiment


@pytest.mark.slow
def test_an_experiment_resumes_only_on_the_same_data(tmp_path, capsys):
    first = small_manifest(tmp_path / "a")
    other_labels = small_manifest(tmp_path / "b", label_shift=0.5)
    out = tmp_path / "exp"
    args = [*EXPERIMENT, "--out", str(out)]
    assert _main([*args, "--root", str(first)], capsys)[0] == 0
    done = (out / "sup" / "official" / "run1" / "done").stat().st_mtime_ns
    line = _error([*args, "--root", str(other_labels)], capsys)
    assert "holds an experiment with other settings (the labels differ)" in line
    assert "--restart" in line
    # The same data in another place is the same experiment: the finished run is kept.
    moved = shutil.copytree(tmp_path / "a", tmp_path / "moved")
    assert _main([*args, "--root", str(moved / "manifest.csv")], capsys)[0] == 0
    assert (out / "sup" / "official" / "run1" / "done").stat().st_mtime_ns == done
    # --restart starts over on the other labels.
    assert _main([*args, "--root", str(other_labels), "--restart"], capsys)[0] == 0
    manifest = _strict_json((out / "experiment.json").read_text())
    assert manifest["config"]["root"] == str(other_labels)
    assert (out / "sup" / "official" / "run1" / "done").stat().st_mtime_ns != done


@pytest.mark.slow
def test_skip_bad_skips_audio_that_fails_when_read(tmp_path, capsys, caplog):
    csv_path = small_manifest(tmp_path / "data")
    nan_file = write_samples(tmp_path / "data" / "u03.wav", np.full(4800, np.nan))
    out = tmp_path / "exp"
    args = [*EXPERIMENT, "--root", str(csv_path), "--out", str(out)]
    code, _, err = _main(args, capsys)
    assert code == 2 and f"{nan_file}: sample 0 is nan" in err and "--skip-bad" in err
    assert "Traceback" not in err
    # mini pre-trains on the fold's audio: the bad file must be gone before, not warned of.
    setups = ["--setups", "sup,mini", "--mini-epochs", "1"]
    code, _, err = _main([*args, *setups, "--skip-bad"], capsys)
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "warning" not in err and not warned
    results = _strict_json((out / "results.json").read_text())
    assert results["skipped_rows"] == 1 and results["num_utterances"] == 17
    assert set(results["setups"]) == {"sup", "mini"}


def test_a_truncated_file_is_a_bad_row_of_the_experiment(tmp_path, capsys):
    csv_path = small_manifest(tmp_path / "data")
    cut = overstate_wav_data(tmp_path / "data" / "u05.wav")
    args = [*EXPERIMENT, "--root", str(csv_path), "--out", str(tmp_path / "exp")]
    code, _, err = _main(args, capsys)
    assert code == 2 and f"{cut}: the header promises" in err and "--skip-bad" in err


# --------------------------------------------------------------------------- predict


def _emotion_model(folder: Path, *, poison: bool = False) -> Path:
    """A (untrained) LFBE recognizer folder as an experiment writes it."""
    torch.manual_seed(0)
    recognizer = EmotionRecognizer(RecognizerConfig(input_dim=40))
    if poison:
        with torch.no_grad():
            next(recognizer.parameters()).fill_(math.inf)
    config = {
        "setup": "sup",
        "dataset": "manifest",
        "fold": "official",
        "run": 1,
        "features": {"kind": "lfbe", "lfbe": LFBEConfig().to_dict()},
        "recognizer": recognizer.config.to_dict(),
        "label_scaler": LabelScaler().to_dict(),
        "label_range": None,
    }
    save_model(folder, recognizer, config)
    return folder


def test_predict_names_a_file_too_short_for_one_frame(tmp_path, capsys):
    model = _emotion_model(tmp_path / "model")
    short = write_samples(tmp_path / "short.wav", np.zeros(100))
    line = _error(["predict", "--model", str(model), str(short)], capsys)
    assert f"{short}: audio of 100 samples is shorter than one 10 ms frame" in line


def test_predict_refuses_a_model_with_non_finite_weights(tmp_path, capsys):
    model = _emotion_model(tmp_path / "model", poison=True)
    wav = write_wav(tmp_path / "a.wav", 0.5)
    line = _error(["predict", "--model", str(model), str(wav)], capsys)
    assert "holds NaN or infinite values" in line and "model.safetensors" in line


def test_predict_never_prints_nan(tmp_path, capsys, monkeypatch):
    model = _emotion_model(tmp_path / "model")
    good, bad = write_wav(tmp_path / "good.wav", 0.5), write_wav(tmp_path / "bad.wav", 0.6)
    real = model_io.EmotionModel.predict_batch

    def predict_batch(self, waves):  # the model's output for bad.wav (0.6 s) is NaN
        values = real(self, waves)
        pairs = zip(values, waves, strict=True)
        return np.stack([v * math.nan if w.shape[0] == 9600 else v for v, w in pairs])

    monkeypatch.setattr(model_io.EmotionModel, "predict_batch", predict_batch)
    args = ["predict", "--model", str(model), str(good), str(bad), "--json"]
    line = _error(args, capsys)
    assert f"{bad}: the prediction is not finite" in line and "--skip-bad" in line
    code, out, err = _main([*args, "--skip-bad"], capsys)
    assert code == 0 and f"warning: skipping {bad}" in err and "1 of 2 file(s) skipped" in err
    rows = _strict_json(out)
    assert [r["file"] for r in rows] == [str(good), str(bad)]
    assert rows[1]["activation"] is None and "not finite" in rows[1]["error"]
    assert all(math.isfinite(rows[0][d]) for d in ("activation", "valence", "dominance"))


# --------------------------------------------------------------------------- visualize


def test_visualize_checks_its_output_before_any_work(tmp_path, capsys, monkeypatch):
    need("sklearn")
    calls = []
    monkeypatch.setattr("cpc_fast.cli.predict.load_cpc_checked", lambda *a: calls.append(a))
    args = ["visualize", "--pretrained", str(tmp_path), "--dataset", "synthetic"]
    line = _error([*args, "--out", str(tmp_path / "a.txt")], capsys)
    assert f"{tmp_path / 'a.txt'}: a figure file must end in one of" in line and ".png" in line
    assert not calls


@pytest.mark.slow
def test_visualize_accepts_skip_bad_and_skips_unreadable_audio(tmp_path, capsys):
    need("sklearn")
    csv_path = small_manifest(tmp_path / "data")
    nan_file = write_samples(tmp_path / "data" / "u04.wav", np.full(4800, np.nan))
    torch.manual_seed(0)
    (tmp_path / "cpc").mkdir()
    save_cpc(
        CPCModel(CPCConfig(encoder_dim=16, context_dim=16)), tmp_path / "cpc" / "m.safetensors"
    )
    args = ["visualize", "--pretrained", str(tmp_path / "cpc" / "m.safetensors"), "--quiet"]
    args += ["--dataset", "manifest", "--root", str(csv_path), "--out", str(tmp_path / "f.png")]
    line = _error(args, capsys)
    assert f"{nan_file}: sample 0 is nan" in line and "with --skip-bad it would be skipped" in line
    code, out, err = _main([*args, "--skip-bad"], capsys)
    assert code == 0, err
    assert "t-SNE of 17 utterances" in out and f"skipping {nan_file}" in err


# --------------------------------------------------------------------------- damaged files


def _experiment_folder(root: Path, result: dict) -> Path:
    unit = root / "sup" / "fold1" / "run1"
    unit.mkdir(parents=True)
    (root / "experiment.json").write_text(json.dumps({"folds": ["fold1"], "dataset": "x"}))
    (unit / "result.json").write_text(json.dumps(result))
    (unit / "predictions.csv").write_text("utt_id,pred_activation\nu1,1.0\n")
    (unit / "done").write_text("now\n")
    return root


@pytest.mark.parametrize(
    "result, message",
    [
        ({"ccc": 0.5}, "result.json: not a result file of cpc-fast (no test.ccc_avg"),
        ({"test": {m: 0.1 for m in ("ccc_avg", "ccc_act", "ccc_val", "ccc_dom")}}, "best_epoch"),
        (
            {"best_epoch": 1, "test": dict.fromkeys(("ccc_avg", "ccc_act", "ccc_val", "ccc_dom"))},
            "predictions.csv: not a predictions file of cpc-fast",
        ),
    ],
)
def test_report_on_damaged_result_files_is_one_line(tmp_path, capsys, result, message):
    folder = _experiment_folder(tmp_path / "exp", result)
    assert message in _error(["report", str(folder)], capsys)


def test_report_on_a_damaged_manifest_is_one_line(tmp_path, capsys):
    (tmp_path / "experiment.json").write_text("[1, 2]")
    line = _error(["report", str(tmp_path)], capsys)
    assert "experiment.json: not an experiment manifest" in line


@pytest.mark.slow
def test_a_damaged_feature_cache_entry_is_one_line(tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["experiment", "--dataset", "synthetic", "--preset", "tiny", "--setups", "sup"]
    args += ["--folds", "1", "--epochs", "1", "--quiet", "--out", str(out)]
    assert _main([*args, "--runs", "1"], capsys)[0] == 0
    (entry,) = (out / "cache").glob("lfbe-*")
    features = entry / "features.bin"
    features.write_bytes(features.read_bytes()[:1000])
    line = _error([*args, "--runs", "2"], capsys)
    assert f"{entry}: a damaged feature-cache entry (features.bin holds 1000 bytes" in line
    assert "delete this folder and it is rebuilt" in line
