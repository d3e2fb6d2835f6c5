"""`cpc-fast experiment` end to end on the synthetic corpus (CPU, tiny preset): result files,
Table 1 layout, resume, `report`, and every setup exercised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_main
from typer.testing import CliRunner

from cpc_fast.cli import app
from cpc_fast.io.checkpoint import load_weights
from cpc_fast.models import save_cpc
from cpc_fast.models.cpc import CPCConfig, CPCModel

runner = CliRunner()
METRICS = ("ccc_avg", "ccc_act", "ccc_val", "ccc_dom")


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Through the real entry point: user mistakes become one line and exit status 2."""
    code, _, err = run_main(args, capsys)
    return code, err


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_sup_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "exp"
    args = [
        "experiment",
        "--dataset",
        "synthetic",
        "--preset",
        "tiny",
        "--setups",
        "sup",
        "--folds",
        "1,2",
        "--runs",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "| Sup |" in result.output

    md = (out / "results.md").read_text()
    assert "| setup | avg | act | val | dom |" in md and "| --- | --- | --- | --- | --- |" in md
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "synthetic"
    sup = results["setups"]["sup"]
    for metric in METRICS:
        assert set(sup[metric]) == {"mean", "std"}
        assert isinstance(sup[metric]["mean"], float) and isinstance(sup[metric]["std"], float)
    assert len(sup["runs"]) == 2
    for run in sup["runs"]:
        assert [f["fold"] for f in run["folds"]] == ["fold1", "fold2"]
        assert run["ccc_act"] == pytest.approx(sum(f["ccc_act"] for f in run["folds"]) / 2)
    assert sup["ccc_act"]["mean"] > 0.3  # clearly above 0
    row = next(line for line in md.splitlines() if line.startswith("| Sup |"))
    assert f"{sup['ccc_act']['mean']:.3f}".lstrip("0") in row

    for fold in ("fold1", "fold2"):
        for run in (1, 2):
            unit = out / "sup" / fold / f"run{run}"
            for name in (
                "model.safetensors",
                "config.json",
                "predictions.csv",
                "result.json",
                "metrics.csv",
                "done",
            ):
                assert (unit / name).is_file(), unit / name
            _, config = load_weights(unit / "model.safetensors", "emotion-recognizer")
            assert config["features"]["kind"] == "lfbe"
            assert set(config["label_scaler"]) == {"mean", "std"}

    # A re-run of the same command skips every finished run.
    done = {p: p.stat().st_mtime_ns for p in out.glob("sup/*/run*/done")}
    again = _run(*args)
    assert again.exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("sup/*/run*/done")} == done
    assert json.loads((out / "results.json").read_text())["setups"] == results["setups"]

    # `report` re-renders from the run folders.
    (out / "results.md").unlink()
    rendered = _run("report", str(out))
    assert rendered.exit_code == 0 and (out / "results.md").read_text() == md

    # An interrupted run (no `done`) is reported as unfinished, then redone alone.
    interrupted = out / "sup" / "fold2" / "run2" / "done"
    interrupted.unlink()
    partial = _run("report", str(out))
    assert "Sup: run(s) 2 unfinished, not included." in partial.output
    assert json.loads((out / "results.json").read_text())["setups"]["sup"]["num_runs"] == 1
    assert _run(*args).exit_code == 0
    redone = {p: p.stat().st_mtime_ns for p in out.glob("sup/*/run*/done")}
    assert [p for p in redone if redone[p] != done.get(p)] == [interrupted]
    assert json.loads((out / "results.json").read_text())["setups"]["sup"]["num_runs"] == 2

    # Other settings into the same folder are refused (no silent mixing of runs).
    code, err = _main([*args, "--epochs", "3"], capsys)
    assert code == 2 and err.startswith("error: ") and "epochs: 10 -> 3" in err


def test_every_cpc_setup_runs(tmp_path: Path) -> None:
    """joint, mini and pre for one epoch on one fold (the demo runs them for real)."""
    torch.manual_seed(0)
    pretrained = tmp_path / "cpc"
    pretrained.mkdir()
    save_cpc(
        CPCModel(CPCConfig(encoder_dim=32, context_dim=48)),
        pretrained / "model.safetensors",
    )
    out = tmp_path / "exp"
    flags = "--dataset synthetic --preset tiny --setups joint,mini,pre --folds 3 --runs 1"
    flags += " --epochs 1 --mini-epochs 1 --quiet"
    result = _run("experiment", *flags.split(), "--pretrained", str(pretrained), "--out", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert list(results["setups"]) == ["joint", "mini", "pre"]
    for setup in ("joint", "mini", "pre"):
        summary = results["setups"][setup]
        assert summary["runs"][0]["folds"][0]["fold"] == "fold3"
        assert summary["ccc_avg"]["std"] is None  # one run: no spread
        _, config = load_weights(out / setup / "fold3" / "run1" / "model.safetensors")
        kind = config["features"]["kind"]
        assert kind == ("joint" if setup == "joint" else "cpc")
    _, joint = load_weights(out / "joint/fold3/run1/model.safetensors")
    assert joint["recognizer"]["input_dim"] == 64  # the tiny CPC's contexts
    _, pre = load_weights(out / "pre/fold3/run1/model.safetensors")
    assert pre["recognizer"]["input_dim"] == 48
    assert pre["features"]["cpc"]["path"] == str(pretrained.resolve())
    assert (out / "mini/fold3/cpc/model.safetensors").is_file()  # pre-trained on fold 3's audio
    assert len(list((out / "cache").iterdir())) == 2  # one context cache per frozen CPC


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--setups", "pre"], "needs --pretrained"),
        (["--setups", "sup,bogus"], "--setups must be"),
        (["--setups", "sup", "--folds", "7"], "has 5 fold(s)"),
        (["--setups", "sup", "--validation", "half"], "--validation must be"),
        (["--dataset", "iemocap", "--setups", "sup"], "needs --root"),
    ],
)
def test_clear_errors(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    args = ["experiment", "--dataset", "synthetic", "--out", str(tmp_path / "x"), "--quiet"]
    code, err = _main(args + extra, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_processes(tmp_path: Path) -> None:
    """--cpu-processes 2 --ddp: two gloo processes train each unit together (DDP per unit,
    the explicit option); every test utterance is scored once. (Without --ddp the two
    processes are workers of whole units: tests/test_schedule.py.)"""
    import csv
    import os
    import subprocess
    import sys

    from cpc_fast.data.corpora.synthetic_emotion import load_synthetic

    out = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpc_fast",
            "experiment",
            "--dataset",
            "synthetic",
            "--preset",
            "tiny",
            "--setups",
            "sup,joint",
            "--folds",
            "2",
            "--runs",
            "1",
            "--epochs",
            "1",
            "--cpu-processes",
            "2",
            "--ddp",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| Sup |") == 1  # rank 0 alone prints
    corpus = load_synthetic("tiny")
    expected = [corpus.records[i].utt_id for i in corpus.folds()[1].test]
    for setup in ("sup", "joint"):
        with open(out / setup / "fold2" / "run1" / "predictions.csv", newline="") as fh:
            assert [r["utt_id"] for r in csv.DictReader(fh)] == expected


def test_iemocap_layout_with_skipped_rows(tmp_path: Path) -> None:
    """Real files in the IEMOCAP layout; a bad row skipped with --skip-bad is counted."""
    from emotion_fixtures import make_iemocap

    root = tmp_path / "IEMOCAP_full_release"
    make_iemocap(root, sessions=(1, 2), seconds=0.3)
    (root / "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_F000.wav").unlink()
    out = tmp_path / "exp"
    args = [
        "experiment",
        "--dataset",
        "iemocap",
        "--root",
        str(root),
        "--setups",
        "sup",
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--runs",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    refused = runner.invoke(app, args)
    assert refused.exit_code != 0 and "does not exist" in str(refused.exception)
    result = _run(*args, "--skip-bad")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "iemocap" and results["skipped_rows"] == 1
    assert results["folds"] == ["fold1", "fold2"]
    assert "Skipped label rows (--skip-bad): 1." in (out / "results.md").read_text()
    manifest = json.loads((out / "experiment.json").read_text())
    assert "Ses02F_impro01_F000.wav does not exist" in manifest["skipped_rows"][0]


def test_msp_podcast_official_split(tmp_path: Path) -> None:
    from emotion_fixtures import make_msp, msp_rows

    make_msp(tmp_path / "msp", msp_rows(4), spelling="labels_concensus.csv")
    out = tmp_path / "exp"
    flags = "--dataset msp-podcast --setups sup --preset tiny --epochs 1 --runs 2 --quiet"
    result = _run("experiment", *flags.split(), "--root", str(tmp_path / "msp"), "--out", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["folds"] == ["official"] and len(results["setups"]["sup"]["runs"]) == 2
    with open(out / "sup/official/run1/predictions.csv") as fh:
        assert len(fh.readlines()) == 1 + 4  # the Test1 rows only


def test_joint_lr_must_be_positive_and_tiny_keeps_the_papers_for_joint() -> None:
    from cpc_fast.config import experiment
    from cpc_fast.errors import UserInputError

    assert experiment.tiny().joint_lr == 2e-4
    assert experiment.paper().joint_lr is None
    with pytest.raises(UserInputError, match="joint_lr"):
        experiment.tiny(dataset="synthetic", setups=("joint",), joint_lr=0.0).validate()
