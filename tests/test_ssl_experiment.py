"""`cpc-fast experiment --setups ...,ssl --upstream ...` end to end: Hugging Face speech SSL
models (tiny, random, saved to folders) beside the paper's setups on the demo's synthetic
corpus and on an IEMOCAP-layout corpus; the extraction spread over preparation tasks, the
learned layer weights saved, the rows of the results table, `predict` with such a model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_runner import one_error_line, run_main
from emotion_fixtures import make_iemocap, write_wav
from ssl_fixtures import family_configs, plain_hidden_states, save_tiny_upstream

from cpc_fast.data.corpora.synthetic_emotion import load_synthetic
from cpc_fast.features import ssl as ssl_module
from cpc_fast.features.cache import open_entry
from cpc_fast.io.checkpoint import load_weights

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.huggingface]


@pytest.fixture(scope="module")
def models(transformers, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    configs = family_configs(transformers)
    return {
        name: save_tiny_upstream(transformers, configs[name], root / name, normalize=False)
        for name in ("wav2vec2", "wavlm", "data2vec")
    }


def _predictions(unit: Path) -> dict[str, list[float]]:
    with open(unit / "predictions.csv", newline="") as fh:
        return {
            r["utt_id"]: [float(r[f"pred_{d}"]) for d in ("activation", "valence", "dominance")]
            for r in csv.DictReader(fh)
        }


def _model_type(entry) -> str:
    return json.loads((entry.path / "meta.json").read_text())["parts"]["model_type"]


def _predict(unit: Path, files: list[Path], capsys) -> list[dict]:
    code, out, err = run_main(["predict", "--model", str(unit), *map(str, files), "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def _check_predict_matches(unit: Path, files: dict[str, Path], capsys) -> None:
    """`predict` on a test utterance's file gives the unit's own test prediction for it."""
    expected = _predictions(unit)
    rows = _predict(unit, list(files.values()), capsys)
    for utt, row in zip(files, rows, strict=True):
        got = [row["activation"], row["valence"], row["dominance"]]
        np.testing.assert_allclose(got, expected[utt], atol=1e-4)


def test_upstreams_beside_sup_on_the_demo_corpus(
    models, transformers, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(ssl_module, "PART_SECONDS", 30.0)  # 143 s of audio: 5 parts
    out = tmp_path / "exp"
    args = [
        "experiment",
        "--dataset",
        "synthetic",
        "--preset",
        "tiny",
        "--setups",
        "sup,ssl",
        "--upstream",
        f"w2v={models['wav2vec2']},{models['wavlm']}",
        "--folds",
        "2",
        "--runs",
        "1",
        "--epochs",
        "3",
        "--ssl-batch-seconds",
        "3",  # padded batches, as on a GPU
        "--out",
        str(out),
        "--quiet",
    ]
    code, stdout, err = run_main(args, capsys)
    assert code == 0, err
    assert "| w2v (weighted sum of layers 0-3) |" in stdout
    results = json.loads((out / "results.json").read_text())
    assert list(results["setups"]) == ["sup", "ssl-w2v", "ssl-wavlm"]
    assert results["setups"]["ssl-wavlm"]["name"] == "wavlm (weighted sum of layers 0-3)"

    # The extraction ran as preparation tasks: 5 parts, then the entry, per upstream.
    claims = out / ".claims"
    for name in ("w2v", "wavlm"):
        parts = sorted(p.name for p in claims.glob(f"prep.ssl-{name}.part*.done"))
        assert parts == [f"prep.ssl-{name}.part{k}.done" for k in range(1, 6)]
        assert (claims / f"prep.ssl-{name}.done").is_file()

    # The cache holds the weighted sum's every hidden state: the model's own, in float16.
    corpus = load_synthetic("tiny")
    entries = [open_entry(m.parent) for m in (out / "cache").glob("ssl-*/meta.json")]
    w2v = next(
        e
        for e in entries
        if json.loads((e.path / "meta.json").read_text())["parts"]["model_type"] == "wav2vec2"
    )
    assert len(w2v.blocks) == 5 and w2v.dim == 4 * 32
    for i in (0, 57, 119):
        states = plain_hidden_states(transformers, models["wav2vec2"], corpus.wave(i))
        reference = np.concatenate(states, axis=1)
        atol = 2.0**-10 * float(np.abs(reference).max())
        np.testing.assert_allclose(w2v[i].astype(np.float32), reference, rtol=2.0**-10, atol=atol)

    # The layer weights were trained with the recognizer and saved with it.
    unit = out / "ssl-w2v" / "fold2" / "run1"
    state, config = load_weights(unit / "model.safetensors", "emotion-recognizer")
    assert config["features"]["kind"] == "ssl" and config["features"]["ssl"]["layers"] == "weighted"
    assert state["layer_sum.weights"].shape == (4,) and state["layer_sum.weights"].abs().min() > 0
    assert config["recognizer"]["input_dim"] == 32
    weights = json.loads((unit / "result.json").read_text())["layer_weights"]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and len(set(weights)) > 1
    assert results["setups"]["ssl-w2v"]["layer_weights"] == pytest.approx(weights, abs=1e-4)
    assert "w2v (weighted sum of layers 0-3): learned layer weights (mean): " in stdout

    # `predict` with the model: the unit's own test predictions, and a new file.
    files = {}
    for i in corpus.folds()[1].test[:3]:
        files[corpus.records[i].utt_id] = tmp_path / f"{corpus.records[i].utt_id}.wav"
        sf.write(files[corpus.records[i].utt_id], corpus.wave(i), 16000, subtype="FLOAT")
    _check_predict_matches(unit, files, capsys)
    new = write_wav(tmp_path / "new.wav", 2.5, seed=7)
    (row,) = _predict(unit, [new], capsys)
    assert all(np.isfinite(row[d]) for d in ("activation", "valence", "dominance"))

    # Exported, the folder holds its upstream: it predicts the same with the original gone.
    # No ONNX graph for it (the upstream runs in chunks, in Python): said, and not written.
    exported = tmp_path / "exported"
    code, listing, err = run_main(["export", str(unit), "--out", str(exported), "--onnx"], capsys)
    assert code == 0, err
    assert "an ssl model has no ONNX export" in listing and not (exported / "model.onnx").exists()
    config = json.loads((exported / "config.json").read_text())
    assert config["features"]["ssl"]["folder"] == "upstream"
    assert (exported / "upstream" / "config.json").is_file()
    moved = models["wav2vec2"].with_name("moved")
    models["wav2vec2"].rename(moved)
    try:
        rows = _predict(exported, [*files.values(), new], capsys)
        gone = run_main(["predict", "--model", str(unit), str(new)], capsys)
    finally:
        moved.rename(models["wav2vec2"])
    assert rows == _predict(unit, [*files.values(), new], capsys)
    assert "is gone; pass its new location" in one_error_line(gone[0], gone[2])

    # A file shorter than the upstream's receptive field (400 samples) has no frame: named.
    short = tmp_path / "short.wav"
    sf.write(short, np.full(320, 0.01, np.float32), 16000, subtype="FLOAT")
    line = one_error_line(*run_main(["predict", "--model", str(unit), str(short)], capsys)[::2])
    assert f"{short}: audio of 320 samples is shorter than the model's first frame (400)" in line

    # One more upstream: its row is added, nothing else retrained; an upstream whose
    # weights changed is refused.
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/*/run*/done")}
    more = [*args]
    more[more.index("--upstream") + 1] += f",{models['data2vec']}"
    assert run_main(more, capsys)[0] == 0
    after = {p: p.stat().st_mtime_ns for p in out.glob("*/*/run*/done")}
    assert {p: after[p] for p in done} == done and len(after) == len(done) + 1
    results = json.loads((out / "results.json").read_text())
    assert list(results["setups"]) == ["sup", "ssl-w2v", "ssl-wavlm", "ssl-data2vec"]
    config = family_configs(transformers)["wav2vec2"]
    save_tiny_upstream(transformers, config, models["wav2vec2"], normalize=False, seed=1)
    line = one_error_line(*run_main(more, capsys)[::2])
    assert "the weights of upstream w2v differ" in line


def test_one_layer_on_an_iemocap_layout(models, tmp_path, capsys) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    make_iemocap(root, sessions=(1, 2), seconds=0.6)
    out = tmp_path / "exp"
    args = [
        "experiment",
        "--dataset",
        "iemocap",
        "--root",
        str(root),
        "--setups",
        "ssl",
        "--upstream",
        str(models["data2vec"]),
        "--ssl-layers",
        "2",
        "--preset",
        "tiny",
        "--epochs",
        "2",
        "--runs",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    code, stdout, err = run_main(args, capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["folds"] == ["fold1", "fold2"]
    assert results["setups"]["ssl-data2vec"]["name"] == "data2vec (layer 2)"
    assert "layer_weights" not in results["setups"]["ssl-data2vec"]
    unit = out / "ssl-data2vec" / "fold1" / "run1"
    state, config = load_weights(unit / "model.safetensors", "emotion-recognizer")
    assert not any(k.startswith("layer_sum.") for k in state)
    assert config["recognizer"]["input_dim"] == 32  # one hidden state: the model's width
    tested = list(_predictions(unit))[:3]
    files = {utt: next(root.glob(f"Session*/sentences/wav/*/{utt}.wav")) for utt in tested}
    _check_predict_matches(unit, files, capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--setups", "ssl"], "the 'ssl' setup needs --upstream"),
        (["--setups", "sup", "--upstream", "MODEL"], "add ssl to --setups"),
        (["--setups", "ssl", "--upstream", "/no/such/model"], "/no/such/model: no such folder"),
        (["--setups", "ssl", "--upstream", "MODEL", "--ssl-layers", "7"], "hidden state 7"),
        (["--setups", "ssl", "--upstream", "a=MODEL,a=MODEL"], "names a twice"),
        (["--setups", "ssl", "--upstream", "MODEL", "--ssl-layers", "last"], "--ssl-layers must"),
    ],
)
def test_clear_errors(models, tmp_path, capsys, extra, message) -> None:
    extra = [e.replace("MODEL", str(models["wavlm"])) for e in extra]
    args = ["experiment", "--dataset", "synthetic", "--out", str(tmp_path / "x"), "--quiet"]
    assert message in one_error_line(*run_main(args + extra, capsys)[::2])
