"""The configuration system: one rule for checks, replace, resume and the diff; command-line
options built from the fields, with the flags the commands have always had."""

from __future__ import annotations

import dataclasses
import json

import pytest
import typer
from typer.testing import CliRunner

from cpc_fast.cli import app
from cpc_fast.cli.app import command_line_wording
from cpc_fast.cli.options import FLAGS
from cpc_fast.config import experiment, pretrain
from cpc_fast.config.experiment import ExperimentConfig
from cpc_fast.config.pretrain import DataConfig, PretrainConfig
from cpc_fast.errors import UserInputError
from cpc_fast.settings import differences, resumable_fields

# The flags of the two configurable commands before their options were built from fields,
# and those added since (NEW_*: issue 13's launch and divergence options, issue 18's --compile,
# issue 19's prepared corpus, issue 21's shared output flag).
PRETRAIN_FLAGS = {
    "--out", "--data", "--format", "--subset", "--gpus", "--preset", "--epochs", "--max-steps",
    "--batch-size", "--lr", "--weight-decay", "--window-seconds", "--crop", "--seed",
    "--workers", "--save-every", "--valid-every", "--log-every", "--max-minutes-per-speaker",
    "--valid-fraction", "--bf16", "--no-bf16", "--restart", "--strict", "--progress",
    "--no-progress",
}  # fmt: skip
EXPERIMENT_FLAGS = {
    "--dataset", "--out", "--root", "--setups", "--pretrained", "--preset", "--runs",
    "--epochs", "--batch-size", "--lr", "--weight-decay", "--joint-lambda", "--joint-lr",
    "--validation", "--folds", "--subset", "--test-set", "--skip-bad", "--mini-epochs",
    "--seed", "--data-seed", "--cache-dir", "--gpus", "--quiet", "-q",
}  # fmt: skip
NEW_PRETRAIN_FLAGS = {"--cpu-processes", "--skip-nonfinite", "--quiet", "-q", "--compile"}
NEW_PRETRAIN_FLAGS |= {"--threads"}  # issue 27: declared once with the experiment's
NEW_PRETRAIN_FLAGS |= {"--cache", "--no-cache", "--cache-dir"}  # issue 19: the prepared corpus
NEW_EXPERIMENT_FLAGS = {"--cpu-processes", "--restart", "--threads", "--ddp", "--workers-per-gpu"}
# Issue 21: the model and the loss are config nodes, with flags; the output flags shared.
NEW_PRETRAIN_FLAGS |= {"--encoder-dim", "--context-dim", "--prediction-steps", "--encoder-norm"}
NEW_PRETRAIN_FLAGS |= {"--num-negatives", "--temperature", "--exclude-positive"}
NEW_EXPERIMENT_FLAGS |= {"--progress", "--no-progress"}
# Issue 28: the ssl setup's Hugging Face upstreams.
NEW_EXPERIMENT_FLAGS |= {"--upstream", "--ssl-layers", "--ssl-chunk-seconds", "--ssl-precision"}
NEW_EXPERIMENT_FLAGS |= {"--ssl-batch-seconds"}
# Issue 30: the SLURM options of both commands (cli/slurm.py).
SLURM_FLAGS = {"--launcher", "--nodes", "--partition", "--account", "--qos", "--time"}
SLURM_FLAGS |= {"--cpus-per-task", "--sbatch", "--signal-delay", "--max-timeouts", "--slurm-dir"}
NEW_PRETRAIN_FLAGS |= SLURM_FLAGS
NEW_EXPERIMENT_FLAGS |= SLURM_FLAGS


def _flags(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]
    return {flag for p in click_command.params for flag in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize(
    "command, flags",
    [
        ("pretrain", PRETRAIN_FLAGS | NEW_PRETRAIN_FLAGS),
        ("experiment", EXPERIMENT_FLAGS | NEW_EXPERIMENT_FLAGS),
    ],
)
def test_commands_keep_their_flags(command: str, flags: set[str]) -> None:
    assert _flags(command) == flags


@pytest.mark.parametrize("command", ["pretrain", "experiment", "demo", "visualize"])
def test_long_running_commands_share_the_output_flags(command: str) -> None:
    assert {"--quiet", "-q", "--progress", "--no-progress", "--out"} <= _flags(command)


def test_pretrain_quiet_prints_no_progress(tmp_path) -> None:
    args = ["pretrain", "--preset", "tiny", "--out", str(tmp_path), "--max-steps", "1",
            "--valid-every", "1", "--log-every", "1", "--save-every", "1"]  # fmt: skip
    loud = CliRunner().invoke(app, args)
    quiet = CliRunner().invoke(app, [*args, "--restart", "-q"])
    assert loud.exit_code == 0 and quiet.exit_code == 0, loud.output + quiet.output
    assert loud.output.strip() and not quiet.output.strip()


def test_help_shows_the_presets_defaults() -> None:
    help_text = CliRunner().invoke(app, ["pretrain", "--help"]).output
    text = " ".join(help_text.replace("│", " ").split())  # rich wraps help inside a box
    assert "(default: paper 8, tiny 4)" in text  # --batch-size differs between the presets
    assert "(default: start)" in text  # --crop does not
    assert "(default: no limit)" in text  # --max-steps: None, said in words


def test_construction_checks_fields_and_replace_validates_the_whole() -> None:
    with pytest.raises(UserInputError, match="`batch_size` must be at least 1, got 0"):
        PretrainConfig(batch_size=0)
    short = PretrainConfig(window_seconds=0.1)  # each field fine on its own...
    with pytest.raises(UserInputError, match="frames"):
        short.validate()  # ...but 10 frames cannot predict 12 steps ahead
    with pytest.raises(UserInputError, match="frames"):
        pretrain.tiny().replace(window_seconds=0.1)
    assert pretrain.tiny().replace(max_steps=None).max_steps is None  # None is a value
    with pytest.raises(UserInputError, match="needs `pretrained=RUN_DIR`"):
        experiment.tiny(setups=("pre",)).validate()


def test_json_round_trip_and_unknown_fields() -> None:
    config = pretrain.tiny(crop="random", data=DataConfig(path="/x", subset="a,b"))
    assert PretrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    exp = experiment.tiny(setups=("sup", "mini"), folds=(1, 3))
    assert ExperimentConfig.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp
    with pytest.raises(UserInputError, match="unknown PretrainConfig fields"):
        PretrainConfig.from_dict({"lr": 1e-3, "learning_rate": 1e-3})


def test_one_diff_rule_skips_resumable_fields_for_every_config() -> None:
    assert resumable_fields(PretrainConfig) == {
        "epochs", "max_steps", "save_every", "valid_every", "log_every", "workers", "strict",
        "bf16", "skip_nonfinite", "cache", "cache_dir", "compile",
        "gpus", "cpu_processes", "threads",
    }  # fmt: skip
    saved = pretrain.tiny().to_dict()
    longer = pretrain.tiny(epochs=90, workers=2).to_dict()
    assert differences(PretrainConfig, saved, longer) == []
    tiny = pretrain.tiny()
    other = tiny.replace(lr=0.5, data=dataclasses.replace(tiny.data, path="/y")).to_dict()
    assert [name for name, _, _ in differences(PretrainConfig, saved, other)] == [
        "data.path",
        "lr",
    ]
    before = experiment.tiny(runs=2).to_dict()
    assert differences(ExperimentConfig, before, experiment.tiny(runs=5).to_dict()) == []
    assert differences(ExperimentConfig, before, experiment.tiny(epochs=3).to_dict()) == [
        ("epochs", 10, 3)
    ]


def test_presets_are_functions_in_one_style() -> None:
    for module in (pretrain, experiment):
        assert module.preset("tiny", seed=7) == module.tiny(seed=7)
        assert module.preset("paper") == module.paper()
        with pytest.raises(UserInputError, match="unknown preset 'huge'"):
            module.preset("huge")


def test_library_errors_read_as_flags_on_the_command_line() -> None:
    flags = FLAGS["pretrain"]
    words = command_line_wording
    assert words("`batch_size` must be at least 1, got 0", flags) == (
        "--batch-size must be at least 1, got 0"
    )
    assert words("`format` folder needs `path=PATH`", flags) == "--format folder needs --data PATH"
    assert words("(with `strict=False` it would be skipped)", flags) == (
        "(without --strict it would be skipped)"
    )
    assert words("use `restart=True` to overwrite it", flags) == "use --restart to overwrite it"
    assert words("`synthetic_seconds` must be 0 < min <= max", flags) == (
        "synthetic_seconds must be 0 < min <= max"
    )  # no flag: the field's name, without the backticks
    assert words("see `cpc-fast pretrain`", flags) == "see `cpc-fast pretrain`"
