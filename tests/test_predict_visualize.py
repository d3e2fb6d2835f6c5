"""`cpc-fast predict` gives the experiment's own test predictions for the same audio (every
feature kind), fails clearly when a frozen CPC moved or changed; `visualize` draws t-SNE."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from optional_deps import need
from scipy.signal import resample_poly
from typer.testing import CliRunner

from cpc_fast.cli import app, main
from cpc_fast.config import experiment as experiment_config
from cpc_fast.data.corpora.synthetic_emotion import load_synthetic
from cpc_fast.emotion.launch import run_experiment
from cpc_fast.models import save_cpc
from cpc_fast.models.cpc import CPCConfig, CPCModel

runner = CliRunner()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    (root / "cpc").mkdir()
    save_cpc(
        CPCModel(CPCConfig(encoder_dim=32, context_dim=32)),
        root / "cpc" / "model.safetensors",
    )
    config = experiment_config.tiny(
        setups=("sup", "joint", "pre"),
        pretrained=str(root / "cpc"),
        folds=(1,),
        runs=1,
        epochs=2,
        out=str(root / "exp"),
    )
    run_experiment(config, progress=False)
    torch.set_num_threads(threads)
    return root


def _test_audio(folder: Path, count: int = 3) -> dict[str, Path]:
    """The first fold-1 test utterances as float wav files (bit-exact samples)."""
    corpus = load_synthetic("tiny")
    test = corpus.folds()[0].test[:count]
    files = {}
    for i in test:
        path = folder / f"{corpus.records[i].utt_id}.wav"
        sf.write(path, corpus.wave(i), 16000, subtype="FLOAT")
        files[corpus.records[i].utt_id] = path
    return files


def _expected(unit: Path) -> dict[str, list[float]]:
    with open(unit / "predictions.csv", newline="") as fh:
        return {
            r["utt_id"]: [float(r[f"pred_{d}"]) for d in ("activation", "valence", "dominance")]
            for r in csv.DictReader(fh)
        }


@pytest.mark.parametrize("setup", ["sup", "joint", "pre"])
def test_predict_matches_test_predictions(experiment: Path, tmp_path: Path, setup: str) -> None:
    files = _test_audio(tmp_path)
    unit = experiment / "exp" / setup / "fold1" / "run1"
    result = runner.invoke(
        app, ["predict", "--model", str(unit), *map(str, files.values()), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    expected = _expected(unit)
    assert [r["file"] for r in rows] == [str(p) for p in files.values()]
    for utt, row in zip(files, rows, strict=True):
        got = [row["activation"], row["valence"], row["dominance"]]
        np.testing.assert_allclose(got, expected[utt], atol=2e-5)
        assert 0.0 < row["activation"] < 6.0  # the labels' 1-5 scale, not z-scores
    table = runner.invoke(app, ["predict", "--model", str(unit), str(next(iter(files.values())))])
    assert table.exit_code == 0 and "activation  valence  dominance" in table.output


# How far a converted copy's predictions may stray from the 16 kHz original's, on the labels'
# 1-5 scale. The round trip loses the original's content between soxr's cut-off and 8 kHz
# (91-100 % of Nyquist), which LFBE's top mel bands see: measured 9e-3 for `sup` (LFBE) on
# the WAV and FLAC copies, 1.8e-2 on the MP3 (lossy); 3e-5 and 7e-5 for `pre` (CPC).
CONVERTED_ATOL = {"44k-stereo.wav": 0.03, "48k.flac": 0.03, "44k.mp3": 0.06}


def _converted_copies(original: Path, folder: Path) -> dict[str, Path]:
    """``original`` (16 kHz mono) as a 44.1 kHz stereo FLOAT WAV, a 48 kHz 24-bit FLAC and
    a 44.1 kHz MP3, made with scipy's resampler (not the one under test)."""
    wave, rate = sf.read(original, dtype="float64")
    assert rate == 16000 and wave.ndim == 1
    at_44k = resample_poly(wave, 441, 160)
    at_48k = resample_poly(wave, 3, 1)
    copies = {name: folder / name for name in CONVERTED_ATOL}
    # left + right average to the original: 1.25 x + 0.75 x
    sf.write(
        copies["44k-stereo.wav"],
        np.stack([1.25 * at_44k, 0.75 * at_44k], 1),
        44100,
        subtype="FLOAT",
    )
    sf.write(copies["48k.flac"], at_48k, 48000, subtype="PCM_24")
    sf.write(copies["44k.mp3"], at_44k, 44100, format="MP3", subtype="MPEG_LAYER_III")
    return copies


@pytest.mark.parametrize("setup", ["sup", "pre"])
def test_predict_on_converted_copies_is_close_to_the_original(
    experiment: Path, tmp_path: Path, setup: str
) -> None:
    original = next(iter(_test_audio(tmp_path, 1).values()))
    copies = _converted_copies(original, tmp_path)
    unit = experiment / "exp" / setup / "fold1" / "run1"
    result = runner.invoke(
        app, ["predict", "--model", str(unit), str(original), *map(str, copies.values()), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    values = [np.array([r["activation"], r["valence"], r["dominance"]]) for r in rows]
    for (name, _), got in zip(copies.items(), values[1:], strict=True):
        np.testing.assert_allclose(got, values[0], atol=CONVERTED_ATOL[name], err_msg=name)
    # reported once for the run, not per file
    assert result.stderr.count("note: ") == 1
    assert (
        "3 of 4 audio files converted to 16000 Hz mono when read (resampled 2 from 44100 Hz, "
        "1 from 48000 Hz; averaged to mono 1 from 2 channels)"
    ) in result.stderr


def test_moved_or_changed_cpc(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    wav = next(iter(_test_audio(tmp_path, 1).values()))
    unit = experiment / "exp" / "pre" / "fold1" / "run1"
    moved = tmp_path / "moved_cpc"
    shutil.move(experiment / "cpc", moved)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "--model", str(unit), str(wav)])
        assert exit_info.value.code == 2
        assert "is gone; pass its new location with --cpc" in capsys.readouterr().err
        ok = runner.invoke(app, ["predict", "--model", str(unit), "--cpc", str(moved), str(wav)])
        assert ok.exit_code == 0, ok.output
        torch.manual_seed(1)
        save_cpc(
            CPCModel(CPCConfig(encoder_dim=32, context_dim=32)),
            tmp_path / "other.safetensors",
        )
        with pytest.raises(SystemExit):
            main(
                [
                    "predict",
                    "--model",
                    str(unit),
                    "--cpc",
                    str(tmp_path / "other.safetensors"),
                    str(wav),
                ]
            )
        assert "not the one this model was trained on" in capsys.readouterr().err
    finally:
        shutil.move(moved, experiment / "cpc")


@pytest.mark.parametrize("source", ["model", "pretrained"])
def test_visualize(experiment: Path, tmp_path: Path, source: str) -> None:
    need("sklearn")
    option = (
        ["--model", str(experiment / "exp/sup/fold1/run1")]
        if source == "model"
        else ["--pretrained", str(experiment / "cpc")]
    )
    out = tmp_path / "fig.png"
    result = runner.invoke(
        app,
        [
            "visualize",
            *option,
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "tiny",
            "--max-utterances",
            "60",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "t-SNE of 60 utterances" in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_visualize_says_first_how_many_cores_it_uses(experiment: Path, tmp_path: Path) -> None:
    from cpc_fast.io.cpus import available_cpus

    need("sklearn")
    args = ["visualize", "--pretrained", str(experiment / "cpc"), "--dataset", "synthetic"]
    args += ["--synthetic-size", "tiny", "--max-utterances", "20", "--out", str(tmp_path / "f.png")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cores = available_cpus()
    threads = f"{cores} thread{'s' if cores > 1 else ''}"
    assert result.output.splitlines()[0] == (
        f"visualize: 1 CPU process x {threads} ({cores} core{'s' if cores > 1 else ''} here)"
    )


def test_visualize_needs_exactly_one_source(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["visualize", "--dataset", "synthetic", "--out", str(tmp_path / "f.png")])
    assert "exactly one of --model DIR or --pretrained RUN_DIR" in capsys.readouterr().err


def test_missing_viz_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from cpc_fast.emotion import visualize
    from cpc_fast.errors import UserInputError

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(UserInputError, match=r"pip install 'cpc-fast\[viz\]'"):
        visualize.tsne_2d(np.zeros((10, 3)))


def test_predict_reads_a_joint_model_of_the_earlier_layout(
    experiment: Path, tmp_path: Path
) -> None:
    """A unit written before the loss had its own config: its CPC config carries the loss
    settings (as config.json did then); it loads and predicts as today's."""
    wav = next(iter(_test_audio(tmp_path, 1).values()))
    unit = experiment / "exp" / "joint" / "fold1" / "run1"
    old = tmp_path / "old_unit"
    shutil.copytree(unit, old)
    record = json.loads((old / "config.json").read_text())
    cpc = record["features"]["cpc_config"]
    assert "num_negatives" not in cpc
    cpc.update(num_negatives=16, temperature=1.0, exclude_positive=False)
    (old / "config.json").write_text(json.dumps(record))
    outputs = []
    for folder in (unit, old):
        result = runner.invoke(app, ["predict", "--model", str(folder), str(wav), "--json"])
        assert result.exit_code == 0, result.output
        outputs.append(
            [{k: v for k, v in r.items() if k != "file"} for r in json.loads(result.output)]
        )
    assert outputs[0] == outputs[1]
