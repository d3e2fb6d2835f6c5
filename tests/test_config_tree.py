"""One config tree down to the model and the loss: every configurable part a node, the loss
settings one object that reaches every loss call, records of the earlier layout upgraded, the
loop's "when due" rule, and the architecture document's table of flags kept true."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import typing
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cpc_fast import load_cpc
from cpc_fast.cli import app
from cpc_fast.config import experiment, pretrain
from cpc_fast.config.experiment import ExperimentConfig
from cpc_fast.config.pretrain import DataConfig, PretrainConfig
from cpc_fast.data.corpora.synthetic_emotion import SyntheticEmotionConfig, tiny_size
from cpc_fast.data.corpora.synthetic_speech import SyntheticSpeechCorpus
from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import load_weights
from cpc_fast.io.metrics import read_metrics
from cpc_fast.losses.config import LossConfig
from cpc_fast.models.cpc import CPCConfig
from cpc_fast.models.recognizer import RecognizerConfig
from cpc_fast.settings import Config, config_fields, differences, flag_of
from cpc_fast.training.due import StepSchedule
from cpc_fast.training.pretrain import pretrain as run_pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = Path(__file__).parent / "fixtures" / "cpc_run_v1"
NODES = (
    PretrainConfig,
    DataConfig,
    CPCConfig,
    LossConfig,
    ExperimentConfig,
    RecognizerConfig,
    SyntheticEmotionConfig,
)


@pytest.mark.parametrize("cls", NODES, ids=lambda c: c.__name__)
def test_every_configurable_part_is_a_node(cls) -> None:
    assert issubclass(cls, Config)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nested = isinstance(hints[f.name], type) and issubclass(hints[f.name], Config)
        assert nested or f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    # A record round-trips: to_dict -> JSON -> from_dict.
    default = cls() if cls is not ExperimentConfig else experiment.tiny()
    assert cls.from_dict(json.loads(json.dumps(default.to_dict()))) == default


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: CPCConfig(encoder_dim=0), "`encoder_dim`"),
        (lambda: CPCConfig(prediction_steps=0), "`prediction_steps`"),
        (lambda: CPCConfig(encoder_norm="time"), "`encoder_norm`"),
        (lambda: CPCConfig(strides=(5, 4), kernel_sizes=(10,)), "`strides`"),
        (lambda: CPCConfig(kernel_sizes=(4, 8, 8, 4)), "kernel >= stride"),
        (lambda: LossConfig(num_negatives=0), "`num_negatives`"),
        (lambda: LossConfig(temperature=0.0), "`temperature`"),
        (lambda: LossConfig(temperature=float("nan")), "`temperature`"),
        (lambda: RecognizerConfig(attention_dim=100), "`attention_dim`"),
        (lambda: RecognizerConfig(dropout=1.0), "`dropout`"),
        (lambda: SyntheticEmotionConfig(sessions=1), "`sessions`"),
        (lambda: SyntheticEmotionConfig(min_seconds=3.0, max_seconds=2.0), "`min_seconds`"),
    ],
)
def test_nodes_check_on_construction(make, field: str) -> None:
    with pytest.raises(UserInputError, match=re.escape(field)):
        make()


def test_presets_of_the_synthetic_corpus_are_functions() -> None:
    assert tiny_size(seed=3) == SyntheticEmotionConfig(
        utterances_per_speaker=12, min_seconds=0.8, max_seconds=1.6, seed=3
    )
    # The corpus's description and fingerprint are built from to_dict: its layout is kept.
    assert tiny_size().to_dict() == {
        "sessions": 5, "utterances_per_speaker": 12, "min_seconds": 0.8, "max_seconds": 1.6,
        "seed": 0,
    }  # fmt: skip


def test_the_loss_moved_out_of_the_model() -> None:
    assert {f.name for f in dataclasses.fields(CPCConfig)}.isdisjoint(
        f.name for f in dataclasses.fields(LossConfig)
    )
    assert pretrain.tiny().loss == LossConfig(num_negatives=16)
    assert pretrain.paper().loss == LossConfig(num_negatives=50, temperature=1.0)


# ----------------------------------------------------------------- flags reach the loss


def test_model_and_loss_flags_reach_the_run_and_every_loss_call(tmp_path, monkeypatch) -> None:
    seen: list[LossConfig] = []
    original = LossConfig.cpc

    def spy(self, *args, **kwargs):
        seen.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LossConfig, "cpc", spy)
    out = tmp_path / "run"
    args = [
        "pretrain", "--preset", "tiny", "--out", str(out), "--max-steps", "2", "--no-cache",
        "--valid-every", "1", "--encoder-dim", "16", "--context-dim", "24",
        "--prediction-steps", "3", "--encoder-norm", "none", "--num-negatives", "5",
        "--temperature", "0.5", "--exclude-positive", "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    wanted = LossConfig(num_negatives=5, temperature=0.5, exclude_positive=True)
    # Two training steps, and validation after each of them (and its batches).
    assert len(seen) >= 4 and all(loss == wanted for loss in seen)
    record = json.loads((out / "config.json").read_text())["config"]
    assert record["loss"] == dataclasses.asdict(wanted)
    assert record["model"]["prediction_steps"] == 3 and "num_negatives" not in record["model"]
    model = load_cpc(out)
    assert model.config == CPCConfig(encoder_dim=16, context_dim=24, prediction_steps=3)
    assert model.predictor.weight.shape == (3 * 16, 24)
    names = {row["name"] for row in read_metrics(out / "metrics.csv")}
    assert "accuracy_step_3" in names and "accuracy_step_4" not in names


# --------------------------------------------------------- records of the earlier layout


def _old_layout(record: dict) -> dict:
    """A PretrainConfig record as written before the loss had its own node."""
    old = {k: v for k, v in record.items() if k != "loss"}
    old["model"] = {**record["model"], **record["loss"]}
    return old


def test_old_records_upgrade_for_from_dict_and_the_diff() -> None:
    config = pretrain.tiny(loss=LossConfig(num_negatives=7, temperature=0.2))
    old = _old_layout(config.to_dict())
    assert PretrainConfig.from_dict(old) == config
    assert differences(PretrainConfig, old, config.to_dict()) == []
    warmer = config.replace(loss=LossConfig(num_negatives=7, temperature=0.3)).to_dict()
    assert differences(PretrainConfig, old, warmer) == [("loss.temperature", 0.2, 0.3)]
    # A model's record (a model file's metadata) of the old layout: the loss fields dropped.
    assert CPCConfig.from_dict(old["model"]) == config.model
    with pytest.raises(UserInputError, match="unknown CPCConfig fields"):
        CPCConfig.from_dict({**old["model"], "num_layers": 2})


def _old_run_config() -> PretrainConfig:
    """The configuration the fixture run was written with (its README), in today's layout."""
    model = CPCConfig(encoder_dim=8, context_dim=8, prediction_steps=3, encoder_norm="channel")
    loss = LossConfig(num_negatives=4, temperature=0.5, exclude_positive=True)
    return pretrain.tiny(model=model, loss=loss, batch_size=2, max_steps=2, epochs=2, cache=False)


def _old_run_corpus() -> SyntheticSpeechCorpus:
    return SyntheticSpeechCorpus(2, 4, seconds=(0.5, 0.8))


def test_fixture_is_of_the_old_layout() -> None:
    record = json.loads((OLD_RUN / "config.json").read_text())["config"]
    assert "loss" not in record and record["model"]["num_negatives"] == 4
    _, metadata = load_weights(OLD_RUN / "model.safetensors", expected_kind="cpc")
    assert metadata["temperature"] == 0.5


def test_model_file_of_the_old_layout_loads() -> None:
    model = load_cpc(OLD_RUN)
    assert model.config == _old_run_config().model
    tensors, _ = load_weights(OLD_RUN / "model.safetensors", expected_kind="cpc")
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[name]), name


def test_run_folder_of_the_old_layout_resumes(tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run, ignore=shutil.ignore_patterns("README.md"))
    corpus = _old_run_corpus()
    # Other loss settings are another run: refused, naming the field.
    other = _old_run_config().replace(loss=LossConfig(num_negatives=4))
    with pytest.raises(UserInputError, match=r"loss\.temperature"):
        run_pretrain(other, corpus, corpus.held_out(1), run, progress=False)
    # The same run, two steps further: resumed from the old checkpoint at step 2.
    longer = _old_run_config().replace(max_steps=4)
    run_pretrain(longer, corpus, corpus.held_out(1), run, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4
    losses = [r["step"] for r in read_metrics(run / "metrics.csv") if r["name"] == "loss"]
    assert losses.count(4) == 2  # the train and the validation rows of step 4, once each
    record = json.loads((run / "config.json").read_text())["config"]
    assert record["loss"] == {"num_negatives": 4, "temperature": 0.5, "exclude_positive": True}


# ------------------------------------------------------------------ the loop's schedule


@pytest.mark.parametrize(
    "periods, validates, step, epoch_done, last, due",
    [
        ((10, 0, 0), True, 5, False, False, (False, False, False)),
        ((10, 0, 0), True, 10, False, False, (True, False, False)),
        ((10, 0, 0), True, 7, True, False, (False, True, True)),  # an epoch's end
        ((10, 0, 0), True, 7, False, True, (True, True, True)),  # the last step: all three
        ((10, 0, 0), False, 7, True, False, (False, False, True)),  # no validation set
        ((3, 4, 6), True, 12, False, False, (True, True, True)),
        ((3, 4, 6), True, 8, True, False, (False, True, False)),  # N > 0 ignores epochs
    ],
)
def test_step_schedule(periods, validates, step, epoch_done, last, due) -> None:
    schedule = StepSchedule(*periods, validates=validates)
    got = schedule.after(step, epoch_done, last)
    assert tuple(got) == due and got.anything == any(due)


# ------------------------------------------------------------- the document's flag table


def _documented_flags() -> dict[str, set[str]]:
    """node -> the flags docs/ARCHITECTURE.md's config table gives it."""
    table: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`") and "Config`" in cells[1]:
            node = cells[0].split(":")[0].strip("` ")
            table[node] = set(re.findall(r"--[a-z0-9-]+(?:/--[a-z0-9-]+)?", cells[2]))
    return table


def test_architecture_table_lists_every_flag_of_each_node() -> None:
    actual: dict[str, set[str]] = {}
    for cls, name in ((PretrainConfig, "pre-training run"), (ExperimentConfig, "experiment")):
        for dotted, f in config_fields(cls):
            flag = flag_of(dotted, f)
            if flag:
                head, _, rest = dotted.partition(".")
                actual.setdefault(f".{head}" if rest else name, set()).add(flag)
    documented = _documented_flags()
    for node, flags in actual.items():
        assert documented.get(node) == flags, node
