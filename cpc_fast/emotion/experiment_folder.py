"""An experiment folder: whether a re-run may resume in it, and starting over.

    OUT/experiment.json                 the configuration, the corpus and its identity
    OUT/<setup>/<fold>/run<r>/          one folder per unit (``done`` when finished)
    OUT/results.md  OUT/results.json    the tables
    OUT/.claims/                        which worker runs which task (:mod:`cpc_fast.io.claims`)
    OUT/.lock                           while a launch checks or changes the folder

A re-run resumes only on the same experiment: the same settings (the resumable fields
excepted, :func:`cpc_fast.settings.differences`), the same data (the corpus's
:meth:`~cpc_fast.data.labelled.EmotionCorpus.identity`: utterances, labels, audio sizes,
whatever its path) and, for ``pre`` and each upstream of ``ssl``, the same weights.
Anything else is refused with one line saying what differs; ``restart`` deletes the
experiment's own files first.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cpc_fast.config.experiment import SETUPS, SSL_SETUP, ExperimentConfig
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import read_json, write_json
from cpc_fast.settings import differences

MANIFEST_NAME = "experiment.json"
CLAIMS_NAME = ".claims"
RESULT_NAMES = ("results.md", "results.json")
_DATA_PARTS = {
    "records": "the utterances (ids, splits, speakers)",
    "labels": "the labels",
    "audio": "the audio files (sizes)",
}


def clear_experiment(out: Path) -> None:
    """Deletes what an experiment writes in ``out`` (its units, claims, manifest and tables),
    and nothing else: the feature cache is keyed by content and stays."""
    for setup in [*SETUPS, *(p.name for p in out.glob(f"{SSL_SETUP}-*"))]:
        shutil.rmtree(out / setup, ignore_errors=True)
    shutil.rmtree(out / CLAIMS_NAME, ignore_errors=True)
    for name in (MANIFEST_NAME, *RESULT_NAMES):
        (out / name).unlink(missing_ok=True)


def check_experiment_folder(out: Path, manifest: dict[str, Any]) -> None:
    """Refuses to mix runs of different experiments in one folder; writes the manifest."""
    path = out / MANIFEST_NAME
    if path.is_file():
        what = what_differs(read_json(path), manifest)
        if what:
            raise UserInputError(
                f"{out} holds an experiment with other settings ({', '.join(what)}); use a "
                "new `out` folder, or `restart=True` to start over"
            )
    write_json(path, manifest)


def what_differs(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What makes two manifests different experiments, one phrase each."""
    old_config = saved.get("config", {})
    what = [
        f"{k}: {a!r} -> {b!r}"
        for k, a, b in differences(ExperimentConfig, old_config, current["config"])
    ]
    old_data = saved.get("data")
    if old_data is None:  # written before data identities: the path is all there is
        if old_config.get("root") != current["config"].get("root"):
            what.append(f"root: {old_config.get('root')!r} -> {current['config'].get('root')!r}")
    else:
        what += [
            f"{phrase} differ"
            for part, phrase in _DATA_PARTS.items()
            if old_data.get(part) != current["data"].get(part)
        ]
    old_digest, digest = saved.get("pretrained_digest"), current.get("pretrained_digest")
    if old_digest and digest and old_digest != digest:
        what.append("the `pretrained` model's weights differ")
    old_upstreams, upstreams = saved.get("upstreams", {}), current.get("upstreams", {})
    what += [
        f"the weights of upstream {name} differ"
        for name in sorted(old_upstreams.keys() & upstreams.keys())
        if old_upstreams[name].get("digest") != upstreams[name].get("digest")
    ]
    return what


__all__ = [
    "CLAIMS_NAME",
    "MANIFEST_NAME",
    "check_experiment_folder",
    "clear_experiment",
    "what_differs",
]
