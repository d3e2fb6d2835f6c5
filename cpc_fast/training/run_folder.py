"""A pre-training run folder: what it holds, and whether a run may resume in it.

    model.safetensors  state.pt  config.json  metrics.csv  summary.json  [tensorboard/]

``config.json`` records the configuration and what the run trained on (item counts and a
fingerprint of the training and validation data); a run started in a folder that holds
another configuration or other data is refused (resumable fields excepted, see
:func:`cpc_fast.settings.differences`) unless ``restart`` deletes these files first.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from cpc_fast import __version__
from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import read_json, write_json
from cpc_fast.io.checkpoint import CONFIG_NAME, STATE_NAME, WEIGHTS_NAME
from cpc_fast.settings import differences

SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.csv"
# What ``restart`` removes: only files a run writes, never the folder itself.
RUN_FILES = (WEIGHTS_NAME, STATE_NAME, CONFIG_NAME, METRICS_NAME, SUMMARY_NAME)


def data_fingerprint(dataset) -> str | None:
    """What a data set holds, as a digest, when it can say (a ``fingerprint()`` method: the
    file list and sizes of a folder or LibriSpeech, the parameters of the synthetic corpus);
    None for one that cannot."""
    if dataset is None:
        return None
    fingerprint = getattr(dataset, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


def run_record(config, train_set, valid_set, env) -> dict[str, Any]:
    """config.json: what defines the run, and what it ran on."""
    return {
        "config": config.to_dict(),
        "train_items": len(train_set),
        "valid_items": 0 if valid_set is None else len(valid_set),
        "train_fingerprint": data_fingerprint(train_set),
        "valid_fingerprint": data_fingerprint(valid_set),
        "train_data": getattr(train_set, "description", type(train_set).__name__),
        "world_size": env.world_size,
        "cpc_fast_version": __version__,
        "torch_version": torch.__version__,
    }


def prepare_run_folder(run: Path, record: dict[str, Any], restart: bool) -> bool:
    """Rank 0: checks the folder against ``record``, writes config.json; True to resume."""
    if run.exists() and not run.is_dir():
        raise UserInputError(f"{run}: `out_dir` must be a folder, this is a file")
    run.mkdir(parents=True, exist_ok=True)
    if restart:
        for name in RUN_FILES:
            (run / name).unlink(missing_ok=True)
        shutil.rmtree(run / "tensorboard", ignore_errors=True)
    resume = (run / STATE_NAME).is_file()
    if resume:
        if not (run / CONFIG_NAME).is_file():
            raise UserInputError(
                f"{run}: has {STATE_NAME} but no {CONFIG_NAME}; use `restart=True` to start over"
            )
        saved = read_json(run / CONFIG_NAME)
        diffs = [
            name
            for name, _, _ in differences(PretrainConfig, saved.get("config", {}), record["config"])
        ]
        if saved.get("train_items") != record["train_items"]:
            diffs.append(
                f"train_items ({saved.get('train_items')} then, {record['train_items']} now)"
            )
        for split in ("train", "valid"):
            key = f"{split}_fingerprint"
            if key in saved and saved[key] != record[key]:  # older folders have none
                diffs.append(f"the {split} data: other files or contents")
        if diffs:
            raise UserInputError(
                f"{run}: holds a run with a different configuration ({', '.join(diffs)}); "
                "use another `out_dir`, or `restart=True` to overwrite it"
            )
    write_json(run / CONFIG_NAME, record)
    return resume


__all__ = [
    "METRICS_NAME",
    "RUN_FILES",
    "SUMMARY_NAME",
    "data_fingerprint",
    "prepare_run_folder",
    "run_record",
]
