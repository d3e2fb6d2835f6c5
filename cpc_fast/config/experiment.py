"""The experiment configuration: which corpus, which setups, how to train. Defaults = paper.

Presets:

* ``paper()``: 50 epochs, 5 runs, batch 32, the paper's CPC sizes for ``joint`` and ``mini``
  (``mini`` pre-trains with :func:`cpc_fast.config.pretrain.paper`), the synthetic corpus at
  its default size.
* ``tiny()``: what a 2-core CPU finishes in minutes: the tiny synthetic corpus (120
  utterances), 10 epochs, 2 runs, batch 8, and the tiny CPC of
  :func:`cpc_fast.config.pretrain.tiny` for
  ``joint`` and ``mini`` (``mini`` pre-trains it for that preset's 30 epochs on each fold's
  training audio). Departures from the paper that make so few steps (about 100 per run)
  learn: Adam's lr is 1e-3, and the joint loss uses λ = 0.1 (measured over 5 folds x 2 runs
  with the joint setup at lr 2e-4: CCC avg .38 with λ = 0.1, .31 with λ = 1). The lr of
  1e-3 suits the recognizers on fixed features (Sup on LFBE: CCC avg .51; at 5e-4 .44, at
  2e-4 .35) but not ``joint``: Adam moves every CPC weight by about lr per step, and at 1e-3
  the joint CPC's contexts lose their differences between utterances within a few dozen
  steps (test CCC 0). ``joint`` keeps the paper's 2e-4 (``joint_lr``): CCC avg .38,
  activation .67.

The batch size is not in the paper (it gives 8 per GPU for CPC only); 32 utterances is our
default for the recognizer: the CCC loss is a batch statistic and needs a batch large enough
to estimate means and variances.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cpc_fast.config import pretrain
from cpc_fast.config.common import Execution, cache_dir_setting, seed_setting
from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.data.corpora import EMOTION_DATASETS
from cpc_fast.data.corpora.synthetic_emotion import SYNTHETIC_SIZES
from cpc_fast.data.labelled import VALIDATION_MODES
from cpc_fast.errors import UserInputError
from cpc_fast.models.ssl_layers import LayerChoice
from cpc_fast.settings import (
    at_least,
    non_negative,
    one_of,
    optional,
    pick_preset,
    positive,
    setting,
)

SETUPS = ("sup", "joint", "mini", "pre")
SETUP_NAMES = {"sup": "Sup", "joint": "jointCPC", "mini": "miniCPC", "pre": "preCPC"}
# Frozen features of Hugging Face speech SSL models (`upstream`): one row per model.
SSL_SETUP = "ssl"
DATASETS = EMOTION_DATASETS
PRESETS = ("paper", "tiny")
SSL_PRECISIONS = ("bf16", "fp16", "fp32")


def _setups(value: tuple[str, ...]) -> str | None:
    if not value or any(s not in (*SETUPS, SSL_SETUP) for s in value):
        return f"must be a comma list of {', '.join((*SETUPS, SSL_SETUP))}, got {','.join(value)!r}"
    if len(set(value)) != len(value):
        return f"lists a setup twice: {','.join(value)}"
    return None


def _batch(value: int) -> str | None:
    return None if value >= 2 else "must be at least 2 (CCC is a batch statistic)"


def _folds(value: tuple[int, ...] | None) -> str | None:
    if value is None or (value and min(value) >= 1):
        return None
    return "takes 1-based fold numbers, e.g. 1,2"


def upstream_name(item: str) -> tuple[str, str]:
    """``(name, source)`` of one `upstream` item, ``NAME=SOURCE`` or ``SOURCE``: the name
    is the folder's (or hub id's) last part, made safe for a folder name."""
    name, _, source = item.partition("=") if "=" in item else ("", "", item)
    name = name or source.rstrip("/").rpartition("/")[2]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "upstream", source


def _upstreams(value: tuple[str, ...] | None) -> str | None:
    if value is None:
        return None
    if not value or any(not upstream_name(item)[1] for item in value):
        return "takes a comma list of model folders (or hub ids), each as FOLDER or NAME=FOLDER"
    names = [upstream_name(item)[0] for item in value]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"names {', '.join(twice)} twice: give each NAME=FOLDER"
    return None


def _layers(value: str) -> str | None:
    try:
        LayerChoice.parse(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class ExperimentConfig(Execution):
    """Everything ``cpc-fast experiment`` needs; ``to_dict`` is written to experiment.json.

    The resumable fields may differ between an interrupted experiment and its re-run
    without changing what any finished run means. Where it runs (``gpus``,
    ``cpu_processes``, ``threads``) is :class:`~cpc_fast.config.common.Execution`'s; each
    unit runs with one thread unless ``threads`` says otherwise.
    """

    default_threads: ClassVar[int | str] = 1
    default_texts: ClassVar[Mapping[str, str]] = {
        "cpu_processes": "without a GPU, one worker per core here, at most the units left; "
        "each runs whole units",
        "threads": "1 per unit, so that a unit's results do not depend on how many run at once",
    }

    dataset: str = setting(
        "synthetic",
        flag=True,
        required_flag=True,
        check=one_of(DATASETS),
        help="iemocap | msp-podcast | manifest | synthetic (built in, no --root).",
    )
    root: str | None = setting(
        None,
        flag=True,
        resumable=True,
        help="IEMOCAP_full_release folder, MSP-Podcast root, or the manifest CSV.",
    )
    out: str = setting(
        "experiment",
        flag=True,
        required_flag=True,
        metavar="PATH",
        resumable=True,
        help="Experiment folder: results.md, results.json, one folder per (setup, fold, "
        "run). Re-running the same command resumes.",
    )
    setups: tuple[str, ...] = setting(
        SETUPS,
        flag=True,
        check=_setups,
        resumable=True,
        help="Comma list of sup, joint, mini, pre, ssl (ssl: one row per --upstream).",
    )
    pretrained: str | None = setting(
        None, flag=True, help="CPC run folder (or model.safetensors) for 'pre'."
    )
    preset: str = setting(
        "paper",
        check=one_of(PRESETS),
        help="paper (the paper's recipe) or tiny (minutes on a CPU).",
    )
    runs: int = setting(
        5, flag=True, check=at_least(1), resumable=True, help="Runs (seeds) per setup."
    )
    epochs: int = setting(50, flag=True, check=at_least(1), help="Recognizer epochs.")
    batch_size: int = setting(32, flag=True, check=_batch, help="Utterances per batch.")
    lr: float = setting(2e-4, flag=True, check=positive, help="Adam learning rate.")
    weight_decay: float = setting(1e-5, flag=True, check=non_negative, help="Adam weight decay.")
    joint_lambda: float = setting(
        1.0,
        flag=True,
        check=non_negative,
        help="λ in the joint loss CCC + λ·InfoNCE.",
    )
    joint_lr: float | None = setting(
        None,
        flag=True,
        check=optional(positive),
        help="Adam lr of the joint setup, when not --lr.",
    )
    validation: str = setting(
        "speaker",
        flag=True,
        check=one_of(VALIDATION_MODES),
        help="speaker (hold out one training speaker) or random (10 %).",
    )
    folds: tuple[int, ...] | None = setting(
        None,
        flag=True,
        check=_folds,
        help="Run only these 1-based folds, e.g. 1,2.",
        default_text="all",
    )
    subset: str = setting(
        "paper",
        flag=True,
        help="IEMOCAP: paper (neu,hap,exc,ang,sad: 5,531 utterances), all, or a list.",
    )
    test_set: str = setting("Test1", flag=True, help="MSP-Podcast test set: Test1, Test2 or Test3.")
    skip_bad: bool = setting(
        False,
        flag=True,
        help="Skip (and count) bad label rows and audio files that fail when read, instead "
        "of stopping.",
    )
    seed: int = seed_setting("run r of fold k (0-based) uses seed + 100 (r - 1) + k")
    data_seed: int = setting(0, flag=True, help="Seed of the synthetic corpus.")
    split_seed: int = setting(0, help="Seed of the random validation hold-outs.")
    synthetic_size: str = setting(
        "default", check=one_of(SYNTHETIC_SIZES), help="Size of the synthetic corpus."
    )
    cpc_preset: str = setting(
        "paper",
        check=one_of(PRESETS),
        help="The pre-training preset that sizes the CPC of joint and mini.",
    )
    mini_epochs: int | None = setting(
        None,
        flag=True,
        check=optional(at_least(1)),
        help="Epochs of the mini setup's CPC pre-training.",
        default_text="its preset's",
    )
    cache_dir: str | None = cache_dir_setting(
        "Feature cache folder (and the decoded corpus, in its prepared/).", "OUT/cache"
    )
    workers_per_gpu: int = setting(
        1,
        flag=True,
        check=at_least(1),
        resumable=True,
        help="Workers sharing each GPU: --gpus N runs N x K units at a time (a small unit "
        "leaves its GPU mostly idle).",
    )
    ddp: bool = setting(
        False,
        flag=True,
        help="Train each unit with DDP over all the processes (--gpus N, --cpu-processes N "
        "or torchrun) instead of one unit per process: for a unit too big for one GPU. The "
        "batch is split, so results differ from one process's.",
    )

    def check_whole(self) -> None:
        if "pre" in self.setups and not self.pretrained:
            raise UserInputError(
                "the 'pre' setup needs `pretrained=RUN_DIR` (a CPC run folder from "
                "`cpc-fast pretrain`, or its model.safetensors)"
            )
        if (SSL_SETUP in self.setups) != bool(self.upstream):
            raise UserInputError(
                "the 'ssl' setup needs `upstream=FOLDER` (a Hugging Face speech model)"
                if self.upstream is None
                else "`upstream` is for the 'ssl' setup: add ssl to `setups`"
            )
        if self.dataset != "synthetic" and not self.root:
            raise UserInputError(f"`dataset` {self.dataset} needs `root`")

    @property
    def device_gpus(self) -> int:
        """The ``gpus`` each process starts with: 0 (the CPU) for ``cpu_processes``."""
        return 0 if self.cpu_processes else self.gpus

    def pretrain_config(self) -> PretrainConfig:
        """The CPC pre-training preset (``cpc_preset``) that sizes the CPC of joint and mini
        and drives mini's pre-training; ``mini_epochs`` overrides its length."""
        config = pretrain.preset(self.cpc_preset)
        if self.mini_epochs is not None:
            config = config.replace(epochs=self.mini_epochs)
        return config

    upstream: tuple[str, ...] | None = setting(
        None,
        flag=True,
        check=_upstreams,
        resumable=True,  # another upstream adds rows; a changed one is refused by its digest
        metavar="[NAME=]FOLDER,...",
        help="Hugging Face speech SSL models for 'ssl' (wav2vec 2.0, HuBERT, WavLM, "
        "data2vec-audio): local folders or hub ids, comma list; one row each, named NAME or "
        "after the folder.",
        default_text="none",
    )
    ssl_layers: str = setting(
        "weighted",
        flag=True,
        check=_layers,
        help="Hidden states for 'ssl': K (one; 0 = the transformer's input), mean, weighted "
        "(SUPERB's learned softmax-weighted sum), or over states A-B: mean:A-B, weighted:A-B.",
    )
    ssl_chunk_seconds: float = setting(
        40.0,
        flag=True,
        check=at_least(1.0),
        help="'ssl': longer files run in chunks of this length, overlapping by a quarter.",
    )
    ssl_precision: str = setting(
        "bf16",
        flag=True,
        check=one_of(SSL_PRECISIONS),
        help="'ssl': autocast of the extraction on a GPU (the CPU computes in fp32).",
    )
    ssl_batch_seconds: float | None = setting(
        None,
        flag=True,
        check=optional(non_negative),
        resumable=True,  # which utterances share a batch: float rounding only
        help="'ssl': padded audio per extraction batch (0: one file at a time).",
        default_text="0 on a CPU, 300 on a GPU",
    )

    @classmethod
    def upgrade(cls, record: dict[str, Any]) -> dict[str, Any]:
        """An experiment from before the ssl setup had none of its settings: the defaults."""
        defaults = cls()
        for name in ("ssl_layers", "ssl_chunk_seconds", "ssl_precision"):
            record.setdefault(name, getattr(defaults, name))
        return record

    def upstreams(self) -> list[tuple[str, str]]:
        """``(name, source)`` of each upstream, in the order given."""
        return [upstream_name(item) for item in self.upstream or ()]


def paper(**overrides: Any) -> ExperimentConfig:
    """The paper's recipe (see the module docstring)."""
    return ExperimentConfig(**{"preset": "paper", **overrides})


def tiny(**overrides: Any) -> ExperimentConfig:
    """Minutes on a CPU (see the module docstring for what departs from the paper)."""
    values = {
        "preset": "tiny",
        "runs": 2,
        "epochs": 10,
        "batch_size": 8,
        "lr": 1e-3,
        "joint_lambda": 0.1,
        "joint_lr": 2e-4,
        "synthetic_size": "tiny",
        "cpc_preset": "tiny",
    }
    return ExperimentConfig(**{**values, **overrides})


def preset(name: str, **overrides: Any) -> ExperimentConfig:
    """The preset called ``name`` ("paper" or "tiny"), with some fields changed."""
    return pick_preset({"paper": paper, "tiny": tiny}, name, **overrides)


__all__ = [
    "DATASETS",
    "PRESETS",
    "SETUPS",
    "SETUP_NAMES",
    "SSL_PRECISIONS",
    "SSL_SETUP",
    "ExperimentConfig",
    "paper",
    "preset",
    "tiny",
]
