"""Results of an experiment folder: ``results.json`` and ``results.md`` (Table 1's layout).

Folder layout (written by :mod:`cpc_fast.emotion.experiment`):

    DIR/experiment.json                         config, corpus summary, fold names
    DIR/<setup>/<fold>/run<r>/result.json       that run's validation and test CCC
    DIR/<setup>/<fold>/run<r>/predictions.csv   test predictions and labels (original scale)
    DIR/<setup>/<fold>/run<r>/done              written last: the run is finished

Scores:

* a fold's test CCC is computed over the fold's whole test set;
* a run's score is the MEAN OVER FOLDS of the per-fold test CCC (how cross-validated SER
  results are usually reported); the CCC of all folds' test predictions pooled together is
  recorded too (``pooled``), as are the per-fold numbers (``folds``);
* ``ccc_avg`` is the mean of the three dimensions' CCC;
* a setup's ``mean ± std`` is over its complete runs (every fold done), ``std`` the sample
  standard deviation (ddof = 1), ``null`` with a single run. Incomplete runs are listed,
  never averaged in.

The ssl setup has a row per upstream (``DIR/ssl-<name>/``), named after it and its layer
choice; with the learned weighted sum, ``layer_weights`` is the mean over its complete
runs and folds of each hidden state's softmax weight.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from cpc_fast.config.experiment import SETUP_NAMES, SETUPS, upstream_name
from cpc_fast.emotion.schedule import SSL_PREFIX, is_ssl
from cpc_fast.emotion.train import ccc_scores
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import atomic_write, read_json, write_json
from cpc_fast.models.ssl_layers import LayerChoice

METRICS = ("ccc_avg", "ccc_act", "ccc_val", "ccc_dom")
SCORE_RULE = (
    "per run: mean over folds of the per-fold test CCC (each over the fold's whole test set); "
    "per setup: mean ± sample std (ddof=1) over runs"
)
PREDICTION_COLUMNS = (
    "utt_id",
    "pred_activation",
    "pred_valence",
    "pred_dominance",
    "activation",
    "valence",
    "dominance",
)


def write_predictions(
    path: str | os.PathLike, utt_ids: list[str], pred: np.ndarray, labels: np.ndarray
) -> None:
    """(N, 3) predictions and labels, original scale, as CSV."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(PREDICTION_COLUMNS)
            for utt, p, y in zip(utt_ids, pred, labels, strict=True):
                writer.writerow([utt, *(f"{v:.6f}" for v in p), *(f"{v:.6f}" for v in y)])

    atomic_write(path, _write)


def read_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(pred (N, 3), labels (N, 3)) from a predictions.csv."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        values = [[float(r[c]) for c in PREDICTION_COLUMNS[1:]] for r in rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(
            f"{path}: not a predictions file of cpc-fast (columns "
            f"{','.join(PREDICTION_COLUMNS)}; {type(exc).__name__}: {exc})"
        ) from None
    table = np.array(values, np.float64).reshape(-1, 6)
    return table[:, :3], table[:, 3:]


def _read_result(path: Path) -> dict[str, Any]:
    """A unit's result.json, checked to hold what the report reads."""
    result = read_json(path)
    test = result.get("test") if isinstance(result, dict) else None
    missing = [m for m in METRICS if not isinstance(test, dict) or m not in test]
    if missing or "best_epoch" not in result:
        what = ", ".join(f"test.{m}" for m in missing) or "best_epoch"
        raise UserInputError(f"{path}: not a result file of cpc-fast (no {what})")
    return result


def _mean_std(values: list[float]) -> dict[str, float | None]:
    arr = np.asarray(values, np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
    }


def _run_entry(out: Path, setup: str, run: int, fold_names: list[str]) -> dict[str, Any] | None:
    """A complete run's scores, or None when a fold is missing."""
    folds, preds, labels = [], [], []
    seed = None
    for fold in fold_names:
        unit = out / setup / fold / f"run{run}"
        if not (unit / "done").is_file():
            return None
        result = _read_result(unit / "result.json")
        seed = result.get("seed", seed)
        folds.append({"fold": fold, **result["test"], "best_epoch": result["best_epoch"]})
        if "layer_weights" in result:
            folds[-1]["layer_weights"] = result["layer_weights"]
        p, y = read_predictions(unit / "predictions.csv")
        preds.append(p)
        labels.append(y)
    entry: dict[str, Any] = {"run": run, "seed": seed}
    for metric in METRICS:
        entry[metric] = float(np.mean([f[metric] for f in folds]))
    entry["pooled"] = ccc_scores(np.concatenate(preds), np.concatenate(labels))
    entry["folds"] = folds
    return entry


def aggregate(out: str | os.PathLike) -> dict[str, Any]:
    """Builds the results dict from an experiment folder's finished runs."""
    out = Path(out)
    manifest_path = out / "experiment.json"
    if not manifest_path.is_file():
        raise UserInputError(f"{out}: no experiment.json; not an experiment folder")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or not {"folds", "dataset"} <= set(manifest):
        raise UserInputError(f"{manifest_path}: not an experiment manifest (no folds, dataset)")
    fold_names = manifest["folds"]
    results: dict[str, Any] = {
        "dataset": manifest["dataset"],
        "description": manifest.get("description", ""),
        "protocol": manifest.get("protocol", ""),
        "score": SCORE_RULE,
        "num_utterances": manifest.get("num_utterances"),
        "skipped_rows": len(manifest.get("skipped_rows", [])),
        "folds": fold_names,
        "setups": {},
    }
    setups = [s for s in (*SETUPS, *_ssl_setups(out, manifest)) if (out / s).is_dir()]
    for setup in setups:
        runs = sorted(
            int(p.name[3:])
            for fold in fold_names
            for p in (out / setup / fold).glob("run*")
            if p.name[3:].isdigit()
        )
        complete, incomplete = [], []
        for run in sorted(set(runs)):
            entry = _run_entry(out, setup, run, fold_names)
            (complete if entry is not None else incomplete).append(entry or run)
        if not complete:
            continue
        summary: dict[str, Any] = {"name": _setup_name(setup, manifest)}
        for metric in METRICS:
            summary[metric] = _mean_std([r[metric] for r in complete])
        weights = [f["layer_weights"] for r in complete for f in r["folds"] if "layer_weights" in f]
        if weights and len({len(w) for w in weights}) == 1:
            summary["layer_weights"] = [round(float(w), 4) for w in np.mean(weights, axis=0)]
        summary["num_runs"] = len(complete)
        summary["runs"] = complete
        if incomplete:
            summary["incomplete_runs"] = incomplete
        results["setups"][setup] = summary
    return results


def _ssl_setups(out: Path, manifest: dict[str, Any]) -> list[str]:
    """The ``ssl-<name>`` folders: in the order of the upstreams given, then any other."""
    given = [upstream_name(u)[0] for u in manifest.get("config", {}).get("upstream") or []]
    found = sorted(p.name for p in out.glob(f"{SSL_PREFIX}*") if p.is_dir())
    ordered = [f"{SSL_PREFIX}{n}" for n in given]
    return ordered + [s for s in found if s not in ordered]


def _setup_name(setup: str, manifest: dict[str, Any]) -> str:
    """The row's name: the paper's for its setups, ``<upstream> (<layers>)`` for ssl."""
    if not is_ssl(setup):
        return SETUP_NAMES[setup]
    name = setup[len(SSL_PREFIX) :]
    layers = manifest.get("config", {}).get("ssl_layers")
    states = manifest.get("upstreams", {}).get(name, {}).get("num_states")
    if layers is None:
        return name
    return f"{name} ({LayerChoice.parse(layers).describe(states)})"


def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    text = f"{x:.3f}"
    return text.replace("0.", ".", 1) if abs(x) < 1 else text


def render_markdown(results: dict[str, Any]) -> str:
    """Table 1's layout: a row per setup, CCC avg / act / val / dom as mean ± std."""
    lines = [f"# CCC on {results['dataset']}", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    runs = sorted({s["num_runs"] for s in results["setups"].values()})
    lines += [
        f"Mean ± std over {'/'.join(map(str, runs)) or 0} run(s); {results.get('protocol', '')}.",
        "",
        "| setup | avg | act | val | dom |",
        "| --- | --- | --- | --- | --- |",
    ]
    for summary in results["setups"].values():
        cells = [f"{_fmt(summary[m]['mean'])} ± {_fmt(summary[m]['std'])}" for m in METRICS]
        lines.append(f"| {summary['name']} | " + " | ".join(cells) + " |")
    lines += ["", f"Score: {results['score']}."]
    if results.get("skipped_rows"):
        lines.append(f"Skipped label rows (--skip-bad): {results['skipped_rows']}.")
    for summary in results["setups"].values():
        if summary.get("incomplete_runs"):
            missing = ", ".join(str(r) for r in summary["incomplete_runs"])
            lines.append(f"{summary['name']}: run(s) {missing} unfinished, not included.")
    for summary in results["setups"].values():
        if summary.get("layer_weights"):
            weights = " ".join(_fmt(w) for w in summary["layer_weights"])
            lines.append(f"{summary['name']}: learned layer weights (mean): {weights}.")
    return "\n".join(lines) + "\n"


def write_report(out: str | os.PathLike) -> dict[str, Any]:
    """Re-aggregates ``out`` and writes results.json and results.md; returns the results."""
    out = Path(out)
    results = aggregate(out)
    write_json(out / "results.json", results)
    text = render_markdown(results)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(text))
    return results


__all__ = [
    "METRICS",
    "PREDICTION_COLUMNS",
    "SCORE_RULE",
    "aggregate",
    "read_predictions",
    "render_markdown",
    "write_predictions",
    "write_report",
]
