"""The experiment as a list of tasks that any worker may run, in the order they should start.

Tasks (names are claim names, :mod:`cpc_fast.io.claims`):

* ``prep.lfbe``: the LFBE feature cache (before every ``sup`` unit);
* ``prep.pre``: the contexts of the ``pretrained`` CPC (before every ``pre`` unit);
* ``prep.mini.<fold>``: the fold's miniCPC pre-training and its contexts (before the fold's
  ``mini`` units);
* ``<setup>.<fold>.run<r>``: one recognizer (a unit).

A unit is done when its folder holds ``done``; a prep task when ``.claims/<task>.done``
exists (its products are the feature cache and the miniCPC run folder, both safe to rebuild).

Longest first: workers take the first task in :func:`plan`'s order whose dependencies are
done. The preparations come first (they unblock units; the miniCPC pre-trainings, the longest,
first of all), then the units by their setup's cost: ``joint`` trains a CPC from raw audio
(about 3.7 times a ``sup`` unit at the demo's size, one thread), then ``mini`` and ``pre``
(CPC contexts, at least as wide as LFBE: 64 dims in the tiny preset, 256 in the paper's),
then ``sup`` (40-dim LFBE); within a setup, fold then run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cpc_fast.data.labelled import Fold

# Position of each kind of task in the start order (module docstring).
_ORDER = {"prep.mini": 0, "prep.pre": 1, "prep.lfbe": 2, "joint": 3, "mini": 4, "pre": 5, "sup": 6}


@dataclass(frozen=True)
class Task:
    """One thing a worker claims and runs."""

    name: str
    kind: str  # "prep" or "unit"
    setup: str
    fold_index: int  # among ALL the corpus's folds: seeds do not depend on --folds
    fold: Fold
    run: int = 0  # units only
    needs: tuple[str, ...] = ()

    def unit_dir(self, out: Path) -> Path:
        return out / self.setup / self.fold.name / f"run{self.run}"


def prep_name(setup: str, fold: Fold) -> str | None:
    """The preparation a unit of ``setup`` on ``fold`` waits for (None for ``joint``)."""
    if setup == "sup":
        return "prep.lfbe"
    if setup == "pre":
        return "prep.pre"
    if setup == "mini":
        return f"prep.mini.{fold.name}"
    return None


def plan(setups: tuple[str, ...], folds: list[tuple[int, Fold]], runs: int) -> list[Task]:
    """Every task of the experiment, in the order workers should start them."""
    tasks: dict[str, Task] = {}
    for setup in setups:
        for index, fold in folds:
            prep = prep_name(setup, fold)
            if prep is not None and prep not in tasks:
                tasks[prep] = Task(prep, "prep", setup, index, fold)
            for run in range(1, runs + 1):
                name = f"{setup}.{fold.name}.run{run}"
                needs = (prep,) if prep else ()
                tasks[name] = Task(name, "unit", setup, index, fold, run, needs)
    setup_rank = {s: k for k, s in enumerate(setups)}

    def key(task: Task) -> tuple:
        if task.kind == "prep":
            group = "prep.mini" if task.setup == "mini" else task.name
        else:
            group = task.setup
        return (_ORDER[group], task.fold_index, task.run, setup_rank[task.setup])

    return sorted(tasks.values(), key=key)


__all__ = ["Task", "plan", "prep_name"]
