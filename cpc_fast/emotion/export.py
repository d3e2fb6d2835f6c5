"""``cpc-fast export``: trained models out of the lab, as self-contained folders in the Hugging
Face Hub layout (and, on request, ONNX graphs).

    export_models("exp/iemocap/pre/fold1/run1", "models/pre-fold1")   # one emotion model
    export_models("exp/iemocap", "models/iemocap", onnx=True)         # every finished unit
    export_models("runs/ls100", "models/cpc-ls100")                   # a CPC run

What a source is, from its ``model.safetensors`` (or its ``experiment.json``):

* an emotion model (an experiment's unit folder, or a folder exported before) -> one folder:
  ``config.json``, ``model.safetensors``, ``README.md`` and, for ``mini``/``pre``, the
  frozen CPC as ``cpc.safetensors`` (:mod:`cpc_fast.emotion.model_io`). The card reports
  the unit's test CCC (its ``result.json``), the data set and protocol and the command that
  trained it, rebuilt from the experiment's ``experiment.json`` (the preset and every flag
  whose value differs from it);
* an experiment folder -> one such folder per finished unit, at the same place below
  ``out`` (``<setup>/<fold>/run<r>``). The frozen CPC files of units that share one CPC
  (every ``pre`` unit; the runs of a ``mini`` fold) are identical, and are written once and
  hard-linked (copied where the file system cannot link);
* a CPC (a ``cpc-fast pretrain`` run folder, its weights file, or a folder exported
  before) -> a folder of ``config.json``, ``model.safetensors`` and ``README.md`` (the data,
  steps and final validation of its ``summary.json``, the command).

``onnx=True`` adds ``model.onnx`` to each folder (:mod:`cpc_fast.emotion.onnx_export`),
checked with ``onnx.checker`` and run with onnxruntime against PyTorch before the folder
is kept; ``int8=True`` also ``model.int8.onnx``, dynamically quantized. Each folder is
built beside its place and renamed into it, so an interrupted export leaves the previous
folder or the new one, never half of one; a folder that holds something other than an
earlier export is refused.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from cpc_fast.config import experiment as experiment_presets
from cpc_fast.config import pretrain as pretrain_presets
from cpc_fast.config.experiment import SETUPS, SSL_SETUP, ExperimentConfig
from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.emotion.model_io import CPC_FILE, HUB_MODEL_TYPE, KIND, EmotionModel, load_model
from cpc_fast.emotion.onnx_export import (
    CHECK_ATOL,
    INT8_NAME,
    ONNX_NAME,
    OnnxEmotionRunner,
    OnnxRunner,
    compare_with_torch,
    export_cpc_onnx,
    export_emotion_onnx,
    need,
    quantize_int8,
)
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import read_json
from cpc_fast.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from cpc_fast.models.cpc import CPC_KIND, CPCModel
from cpc_fast.models.cpc import HUB_MODEL_TYPE as CPC_MODEL_TYPE
from cpc_fast.settings import Config, config_fields, field_type, flag_of, flatten

EXPERIMENT_MANIFEST = "experiment.json"
_MODEL_TYPES = (HUB_MODEL_TYPE, CPC_MODEL_TYPE)


@dataclass(frozen=True)
class Exported:
    """One folder written: what it holds and, with ONNX, how far onnxruntime's outputs were
    from PyTorch's when checked."""

    folder: Path
    what: str  # "sup", "joint", "mini", "pre" or "cpc"
    onnx_difference: float | None = None
    shares_cpc_with: Path | None = None  # the folder whose cpc.safetensors this one links
    note: str | None = None  # what was asked for and not written, and why


def export_models(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    onnx: bool = False,
    int8: bool = False,
    cpc_path: str | os.PathLike | None = None,
) -> list[Exported]:
    """Writes the folder(s) of ``source`` under ``out`` (module docstring); returns them.

    ``cpc_path`` points a ``mini``/``pre`` model at its frozen CPC if it moved (one model).
    """
    source, out = Path(source), Path(out)
    if int8 and not onnx:
        raise UserInputError("`int8` quantizes the ONNX graph: give `onnx=True` too")
    if onnx:  # asked for by name before any work
        need("onnx", "`onnx`")
        need("onnxruntime", "`onnx`")
    if (source / EXPERIMENT_MANIFEST).is_file():
        units = list(_finished_units(source))
        if not units:
            raise UserInputError(f"{source}: no finished unit in this experiment folder")
        written = [
            _export_emotion(load_model(unit), unit, out / unit.relative_to(source), onnx, int8)
            for unit in units
        ]
        return _share_cpc_files(written)
    kind = _weights_kind(source)
    if kind == KIND:
        model = load_model(source, cpc_path=cpc_path)
        return [_export_emotion(model, model.folder, out, onnx, int8)]
    if kind == CPC_KIND:
        return [_export_cpc(source, out, onnx)]
    raise UserInputError(
        f"{source}: holds a {kind!r} model; expected an emotion model, a CPC or an experiment"
    )


def _weights_kind(source: Path) -> str | None:
    weights = source / WEIGHTS_NAME if source.is_dir() else source
    if not weights.is_file():
        raise UserInputError(
            f"{source}: neither a model folder (no {WEIGHTS_NAME}) nor an experiment folder "
            f"(no {EXPERIMENT_MANIFEST})"
        )
    try:
        with safe_open(str(weights), framework="pt") as fh:
            return (fh.metadata() or {}).get("kind")
    except Exception as exc:  # safetensors raises its own error types
        raise UserInputError(f"{weights}: not a readable safetensors file ({exc})") from None


def _finished_units(experiment: Path) -> Iterator[Path]:
    ssl = sorted(p.name for p in experiment.glob(f"{SSL_SETUP}-*") if p.is_dir())
    for setup in (*SETUPS, *ssl):
        yield from sorted(p.parent for p in experiment.glob(f"{setup}/*/run*/done"))


# -- emotion models --------------------------------------------------------------------------


def _export_emotion(
    model: EmotionModel, source: Path | None, target: Path, onnx: bool, int8: bool
) -> Exported:
    """One emotion model's folder, its card completed from the unit's records. An ``ssl``
    model's folder holds its upstream but no graph: the upstream runs its chunks in Python
    (:class:`~cpc_fast.features.ssl.SSLFrontEnd`), which one traced graph cannot hold."""
    note = None
    if onnx and model.feature_kind == "ssl":
        note = "no model.onnx: an ssl model has no ONNX export (its upstream runs in chunks)"
        onnx = int8 = False
    if source is not None:
        model.config = {**model.config, **_unit_records(source)}
    difference = None

    def write(folder: Path) -> None:
        nonlocal difference
        model.save_pretrained(folder)
        if onnx:
            export_emotion_onnx(model, folder / ONNX_NAME)
            difference = compare_with_torch(model, OnnxEmotionRunner(folder / ONNX_NAME))
            _check_graph(target, difference, "outputs")
            if int8:
                quantize_int8(folder / ONNX_NAME, folder / INT8_NAME)

    _replace_folder(target, write)
    return Exported(target, model.config["setup"], difference, note=note)


def _check_graph(target: Path, difference: float, what: str) -> None:
    """Refuses a graph whose onnxruntime ``what`` are further than CHECK_ATOL from PyTorch's
    (a NaN difference too); the folder being written is then not kept."""
    if not difference <= CHECK_ATOL:
        raise UserInputError(
            f"{target}: onnxruntime's {what} differ from PyTorch's by {difference:.3g} "
            f"(more than {CHECK_ATOL}); the graph is not kept"
        )


def _unit_records(unit: Path) -> dict[str, Any]:
    """What the card reports that the model's config does not hold: the test CCC and the
    training (``result.json``; the experiment's ``experiment.json`` two folders up)."""
    result = unit / "result.json"
    if not result.is_file():  # an exported folder: its config holds them already
        return {}
    summary = read_json(result)
    keys = ("epochs", "best_epoch", "seed", "num_train", "num_validation", "num_test")
    training = {k: summary[k] for k in keys if k in summary}
    records: dict[str, Any] = {"test": summary.get("test"), "training": training}
    manifest = unit.parents[2] / EXPERIMENT_MANIFEST if len(unit.parents) > 2 else None
    if manifest is not None and manifest.is_file():
        record = read_json(manifest)
        training["data"] = record.get("description", "-")
        training["protocol"] = record.get("protocol", "-")
        config = ExperimentConfig.from_dict(record["config"])
        base = experiment_presets.preset(config.preset)
        training["command"] = command_line(
            ["cpc-fast", "experiment", "--preset", config.preset], config, base
        )
    return records


def _share_cpc_files(written: list[Exported]) -> list[Exported]:
    """Hard-links the ``cpc.safetensors`` of folders whose frozen CPC has the same weight
    digest (their config's) to the first one written; where the file system cannot link,
    the copies stay. (Not by the files' bytes: safetensors writes its metadata in no fixed
    order, so two files of the same weights may differ.)"""
    first: dict[str, Path] = {}
    shared = []
    for item in written:
        path = item.folder / CPC_FILE
        if not path.is_file():
            shared.append(item)
            continue
        digest = read_json(item.folder / CONFIG_NAME)["features"]["cpc"]["digest"]
        original = first.setdefault(digest, path)
        tmp = path.with_name(f".{CPC_FILE}.{os.getpid()}.link")
        try:
            if original == path:
                raise FileExistsError  # the first of its digest: nothing to link
            os.link(original, tmp)
            os.replace(tmp, path)
        except OSError:  # the first, another file system, or links not allowed: a copy
            tmp.unlink(missing_ok=True)
            shared.append(item)
            continue
        shared.append(replace(item, shares_cpc_with=original.parent))
    return shared


# -- CPC -------------------------------------------------------------------------------------


def _export_cpc(source: Path, target: Path, onnx: bool) -> Exported:
    if source.is_dir():
        model = CPCModel.from_pretrained(source)
    else:
        model = CPCModel.from_file(source)
    if model.training_record is None and source.is_dir():
        model.training_record = _run_records(source)
    difference = None

    def write(folder: Path) -> None:
        nonlocal difference
        model.save_pretrained(folder)
        if onnx:
            export_cpc_onnx(model, folder / ONNX_NAME)
            difference = _cpc_difference(model, OnnxRunner(folder / ONNX_NAME))
            _check_graph(target, difference, "contexts")

    _replace_folder(target, write)
    return Exported(target, "cpc", difference)


def _run_records(run: Path) -> dict[str, Any] | None:
    """The card's training record of a ``cpc-fast pretrain`` run folder (its config.json
    and summary.json), or None where they are not there."""
    if not (run / CONFIG_NAME).is_file():
        return None
    record = read_json(run / CONFIG_NAME)
    if "config" not in record:
        return None
    config = PretrainConfig.from_dict(record["config"])
    name, base = min(
        ((name, pretrain_presets.preset(name)) for name in pretrain_presets.PRESETS),
        key=lambda named: len(_changed(config, named[1])),
    )
    training: dict[str, Any] = {
        "data": f"{record.get('train_data', '-')}, {record.get('train_items', '?')} files",
        "command": command_line(["cpc-fast", "pretrain", "--preset", name], config, base),
    }
    summary = run / "summary.json"
    if summary.is_file():
        done = read_json(summary)
        training.update({k: done[k] for k in ("steps", "epochs", "audio_hours") if k in done})
        training["validation"] = done.get("final_validation")
    return training


def _cpc_difference(model: CPCModel, runner: OnnxRunner) -> float:
    """The largest difference between the graph's z and c and PyTorch's, each row of a
    padded batch against the row alone."""
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (8000, 20800)]
    lengths = np.array([w.shape[0] for w in waves])
    batch = np.zeros((2, lengths.max()), np.float32)
    for row, w in zip(batch, waves, strict=True):
        row[: w.shape[0]] = w
    z, c, frames = runner.run(batch, lengths)
    worst = 0.0
    with torch.inference_mode():
        for b, w in enumerate(waves):
            x = torch.from_numpy(w).unsqueeze(0)
            for got, want in ((z, model.encode(x)), (c, model.context(x))):
                difference = np.abs(got[b, : frames[b]] - want[0].numpy()).max()
                worst = max(worst, float(difference))
    return worst


# -- the command that trained a model ------------------------------------------------------


def command_line(words: list[str], config: Config, base: Config) -> str:
    """``words`` and the flags that turn ``base`` (a preset) into ``config``: every flagged
    field whose value differs. Fields without a flag that differ are named after it."""
    fields = dict(config_fields(type(config)))
    flags, others = [], []
    for dotted, value in _changed(config, base).items():
        flag = flag_of(dotted, fields[dotted]) if dotted in fields else None
        is_bool = flag is not None and field_type(type(config), dotted) is bool
        on, _, off = (flag or "").partition("/")
        if flag is None or value is None or (is_bool and not value and not off):
            others.append(f"{dotted}={value!r}")
        elif is_bool:
            flags.append(on if value else off)
        else:
            shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            flags += [flag, shown]
    line = shlex.join([*words, *flags])
    return line + (f" (and, in Python, {', '.join(others)})" if others else "")


def _changed(config: Config, base: Config) -> dict[str, Any]:
    """Dotted name -> value of every leaf field of ``config`` that differs from ``base``."""
    mine, theirs = flatten(config.to_dict()), flatten(base.to_dict())
    return {k: v for k, v in mine.items() if v != theirs.get(k)}


# -- writing a folder ------------------------------------------------------------------------


def _replace_folder(target: Path, write: Callable[[Path], None]) -> None:
    """Builds a folder with ``write`` beside ``target``, then puts it in its place (an
    earlier export there is replaced; anything else is refused)."""
    if target.exists() and not _replaceable(target):
        raise UserInputError(
            f"{target}: holds files other than an exported model; choose another `out`"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _replaceable(folder: Path) -> bool:
    """An empty folder, or one an earlier export wrote."""
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    config = folder / CONFIG_NAME
    try:
        return config.is_file() and read_json(config).get("model_type") in _MODEL_TYPES
    except UserInputError:
        return False


__all__ = ["EXPERIMENT_MANIFEST", "Exported", "command_line", "export_models"]
