"""`cpc-fast demo` plumbing on a micro plan (CI runs the real `cpc-fast demo --quick`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from optional_deps import need
from typer.testing import CliRunner

from cpc_fast.config.experiment import SETUPS
from cpc_fast.demo import SYNTHETIC_NOTICE, demo_settings, run_demo, summary_text

need("matplotlib")
need("sklearn")


def _micro(out: Path):
    """All four setups and both figures, on one fold with one-epoch trainings."""
    settings = demo_settings(out, quick=True)
    return replace(
        settings,
        pretrain=replace(settings.pretrain, max_steps=6, log_every=2),
        experiment=replace(settings.experiment, folds=(1,), runs=2, epochs=1, mini_epochs=1),
        tsne_utterances=40,
        label="micro",
    )


@pytest.mark.slow
def test_demo_writes_every_output_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_demo(out, progress=False, settings=_micro(out))

    for name in ("results.md", "results.json", "tsne.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "cpc" / "model.safetensors").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["synthetic"] is True
    assert set(results["setups"]) == set(SETUPS)
    for setup in SETUPS:
        assert len(results["setups"][setup]["runs"]) == 2
    markdown = (out / "results.md").read_text()
    assert SYNTHETIC_NOTICE in markdown
    assert "| preCPC |" in markdown and "--preset paper --gpus 8" in markdown

    text = summary_text(result)
    assert "SYNTHETIC" in text and "| Sup |" in text and str(out / "tsne.png") in text

    again = run_demo(out, progress=False, settings=_micro(out))
    assert again.results["setups"] == result.results["setups"]
    assert again.seconds["experiment"] < result.seconds["experiment"]


def test_quick_plan_is_smaller_than_the_full_plan(tmp_path: Path) -> None:
    full, quick = demo_settings(tmp_path, quick=False), demo_settings(tmp_path, quick=True)
    assert full.experiment.setups == quick.experiment.setups == SETUPS
    assert full.experiment.runs >= 2 and quick.experiment.runs >= 2
    assert quick.experiment.epochs < full.experiment.epochs
    assert quick.pretrain.epochs < full.pretrain.epochs
    assert full.experiment.pretrained == str(tmp_path / "cpc")


def test_demo_command_help_and_restart_keeps_foreign_files(tmp_path: Path, monkeypatch) -> None:
    from cpc_fast.cli import app

    runner = CliRunner()
    assert "--quick" in runner.invoke(app, ["demo", "--help"]).output

    out = tmp_path / "demo"
    (out / "experiment").mkdir(parents=True)
    (out / "results.md").write_text("old")
    (out / "mine.txt").write_text("keep me")
    calls = []
    monkeypatch.setattr("cpc_fast.demo.run_demo", lambda o, **kw: calls.append((o, kw)) or None)
    monkeypatch.setattr("cpc_fast.demo.summary_text", lambda r: "summary")
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--restart", "--quiet"])
    assert result.exit_code == 0, result.output
    assert calls == [(out, {"quick": True, "progress": False})]
    assert not (out / "experiment").exists() and not (out / "results.md").exists()
    assert (out / "mine.txt").read_text() == "keep me"
