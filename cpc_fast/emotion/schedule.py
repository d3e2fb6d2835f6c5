"""The experiment as a list of tasks that any worker may run, in the order they should start.

Tasks (names are claim names, :mod:`cpc_fast.io.claims`):

* ``prep.lfbe``: the LFBE feature cache (before every ``sup`` unit);
* ``prep.pre``: the contexts of the ``pretrained`` CPC (before every ``pre`` unit);
* ``prep.mini.<fold>``: the fold's miniCPC pre-training and its contexts (before the fold's
  ``mini`` units);
* ``prep.ssl-<name>.part<k>``: part k of the SSL features of upstream ``<name>`` (any
  worker, any order: the extraction spread over the workers), and ``prep.ssl-<name>``,
  which writes the cache entry once every part is done (before every ``ssl-<name>`` unit);
* ``<setup>.<fold>.run<r>``: one recognizer (a unit); the ``ssl`` setup is one unit setup
  ``ssl-<name>`` per upstream (:func:`unit_setups`).

A unit is done when its folder holds ``done``; a prep task when ``.claims/<task>.done``
exists (its products are the feature cache and the miniCPC run folder, both safe to rebuild).

Longest first: workers take the first task in :func:`plan`'s order whose dependencies are
done. The preparations come first (they unblock units; the miniCPC pre-trainings, the longest,
first of all, then the SSL extractions, one upstream's parts and entry after another), then
the units by their setup's cost: ``joint`` trains a CPC from raw audio (about 3.7 times a
``sup`` unit at the demo's size, one thread), then ``ssl`` (768 dims for a BASE model), then
``mini`` and ``pre`` (CPC contexts, at least as wide as LFBE: 64 dims in the tiny preset, 256
in the paper's), then ``sup`` (40-dim LFBE); within a setup, fold then run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cpc_fast.config.experiment import SSL_SETUP
from cpc_fast.data.labelled import Fold

# Position of each kind of task in the start order (module docstring).
_ORDER = {
    "prep.mini": 0,
    "prep.ssl": 1,
    "prep.pre": 2,
    "prep.lfbe": 3,
    "joint": 4,
    "ssl": 5,
    "mini": 6,
    "pre": 7,
    "sup": 8,
}
SSL_PREFIX = f"{SSL_SETUP}-"  # the unit setup of upstream NAME: ssl-NAME


def unit_setups(setups: Sequence[str], upstreams: Sequence[str]) -> tuple[str, ...]:
    """The setups whose units an experiment trains: ``setups`` with ``ssl`` replaced by one
    ``ssl-<name>`` per upstream name, in place."""
    out: list[str] = []
    for setup in setups:
        out += [f"{SSL_PREFIX}{n}" for n in upstreams] if setup == SSL_SETUP else [setup]
    return tuple(out)


def is_ssl(setup: str) -> bool:
    """Whether ``setup`` is the unit setup of an upstream (``ssl-<name>``)."""
    return setup.startswith(SSL_PREFIX)


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
    part: int = 0  # an SSL extraction's part (1-based; 0: not a part)

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
    if is_ssl(setup):
        return f"prep.{setup}"
    return None


def plan(
    setups: tuple[str, ...],
    folds: list[tuple[int, Fold]],
    runs: int,
    ssl_parts: Mapping[str, int] | None = None,
) -> list[Task]:
    """Every task of the experiment, in the order workers should start them. ``setups`` are
    unit setups (:func:`unit_setups`); ``ssl_parts[setup]``, the parts of the extraction of
    each ``ssl-<name>`` setup."""
    tasks: dict[str, Task] = {}
    for setup in setups:
        for index, fold in folds:
            prep = prep_name(setup, fold)
            if prep is not None and prep not in tasks:
                parts = (ssl_parts or {}).get(setup, 0) if is_ssl(setup) else 0
                names = [f"{prep}.part{k}" for k in range(1, parts + 1)]
                for k, part in enumerate(names, start=1):
                    tasks[part] = Task(part, "prep", setup, index, fold, part=k)
                tasks[prep] = Task(prep, "prep", setup, index, fold, needs=tuple(names))
            for run in range(1, runs + 1):
                name = f"{setup}.{fold.name}.run{run}"
                needs = (prep,) if prep else ()
                tasks[name] = Task(name, "unit", setup, index, fold, run, needs)
    setup_rank = {s: k for k, s in enumerate(setups)}

    def key(task: Task) -> tuple:
        if task.kind == "prep" and is_ssl(task.setup):
            # One upstream's parts, then its entry (which waits for them), then the next's.
            entry = task.part or len(task.needs) + 1
            return (_ORDER["prep.ssl"], setup_rank[task.setup], entry, 0)
        if task.kind == "prep":
            group = "prep.mini" if task.setup == "mini" else task.name
        else:
            group = "ssl" if is_ssl(task.setup) else task.setup
        return (_ORDER[group], task.fold_index, task.run, setup_rank[task.setup])

    return sorted(tasks.values(), key=key)


__all__ = ["SSL_PREFIX", "Task", "is_ssl", "plan", "prep_name", "unit_setups"]
