"""Runs the paper's emotion experiments: setups x folds x runs, then the results table.

    from cpc_fast.config import experiment
    from cpc_fast.emotion.launch import run_experiment
    results = run_experiment(experiment.tiny(setups=("sup", "joint"), out="exp"))

or ``cpc-fast experiment --dataset synthetic --preset tiny --setups sup,joint --out exp``.

For every setup, fold and run (seed = ``seed + 100 (run − 1) + fold index``) a recognizer is
trained (:mod:`cpc_fast.emotion.unit`, :mod:`cpc_fast.emotion.train`) and its folder
``<out>/<setup>/<fold>/run<r>`` gets
the best model, its test predictions, metrics and a ``done`` marker written last; a re-run of
the same command skips every folder with ``done`` and resumes an unfinished one from its
last epoch (``state.pt``, removed when the unit is done). Inputs per setup:

Every recognizer standardises its input with the training split's per-dimension frame mean
and std (fixed buffers saved with the model, see :mod:`cpc_fast.models.recognizer`).

* ``sup``: LFBE;
* ``joint``: raw audio through a fresh CPC (``cpc_preset`` sizes), trained with the
  recognizer on CCC loss + λ · InfoNCE (:mod:`cpc_fast.emotion.joint`);
* ``mini``: per fold, a CPC pre-trained (:mod:`cpc_fast.training.pretrain`) on that fold's
  training audio only, in ``<out>/mini/<fold>/cpc``, shared by the fold's runs; frozen;
* ``pre``: the CPC of ``--pretrained``, frozen;
* ``ssl``: for each Hugging Face model of ``--upstream``, the hidden states ``--ssl-layers``
  chooses (:mod:`cpc_fast.features.ssl`), frozen; units in ``<out>/ssl-<name>/``, and for the
  learned weighted sum the layer weights trained with the recognizer.

Frozen CPC contexts, SSL hidden states and LFBE are extracted once into the feature cache
(``<out>/cache`` by default), keyed by the weights' digest and the corpus's fingerprint; an
upstream's extraction is split into parts that the workers share. Before anything else
every audio file is decoded once into the prepared corpus (``<cache>/prepared``, which
later reads come from and a re-run reuses): a file that fails is listed, or skipped and
counted with ``skip_bad``. A re-run resumes only on the same
settings, data and pre-trained weights (:mod:`cpc_fast.emotion.experiment_folder`).

Scheduling (:mod:`cpc_fast.emotion.schedule`): the experiment is a list of tasks (the
feature caches and each fold's miniCPC pre-training, then the units, longest first) that
workers claim one at a time through ``<out>/.claims`` (:mod:`cpc_fast.io.claims`). A worker
runs a whole unit on one device with ``threads`` CPU threads, so a unit's files are
bit-identical whichever worker runs it, alone or beside others. How many workers a launch
starts, and where, is :mod:`cpc_fast.emotion.launch`'s (``--gpus N``, ``--workers-per-gpu K``,
``--cpu-processes N``; this module is the worker, :class:`Runner`); any number of launches
on the same ``out`` (other terminals, nodes, a SLURM array, torchrun) share the work: a
dead worker's claim is taken over, its unit resumed from its last epoch. Whoever finishes
the last task writes the tables. ``ddp`` trains each unit with DDP over the launched
processes instead (the group is then one worker; rank 0 alone writes files).
``<out>/.claims/events.log`` says who ran what: one line per start, takeover, failure,
preemption and end. A preempted worker (:mod:`cpc_fast.training.preemption`) stops before its
next batch, keeps the unit's last epoch's checkpoint and releases its claim at once, so any
worker may resume the unit; between tasks it starts none.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cpc_fast.config.experiment import ExperimentConfig
from cpc_fast.data.corpora import open_emotion_corpus
from cpc_fast.data.labelled import EmotionCorpus, Fold
from cpc_fast.emotion.experiment_folder import (
    CLAIMS_NAME as CLAIMS,
)
from cpc_fast.emotion.experiment_folder import (
    check_experiment_folder,
)
from cpc_fast.emotion.model_io import load_cpc_checked
from cpc_fast.emotion.report import write_report
from cpc_fast.emotion.schedule import SSL_PREFIX, Task, is_ssl, plan, unit_setups
from cpc_fast.emotion.unit import UnitPlace, run_unit
from cpc_fast.errors import UserInputError
from cpc_fast.features.cache import FeatureSet, cache_key, module_digest
from cpc_fast.features.extract import cpc_context_features, lfbe_features
from cpc_fast.features.lfbe import LFBEConfig
from cpc_fast.features.ssl import STORAGE, SSLFeatureCache
from cpc_fast.features.upstream import Upstream, UpstreamInfo, load_upstream
from cpc_fast.io.atomic import atomic_write_bytes
from cpc_fast.io.claims import Claim, ClaimBoard
from cpc_fast.io.cpus import available_cpus
from cpc_fast.io.lock import FolderLock
from cpc_fast.models.loading import load_cpc
from cpc_fast.models.ssl_layers import LayerChoice
from cpc_fast.training.distributed import (
    DistEnv,
    barrier,
    broadcast_object,
    on_main_then_broadcast,
)
from cpc_fast.training.preemption import Preempted, deferred, requested, stop_agreed
from cpc_fast.training.pretrain import pretrain

POLL_SECONDS = 1.0  # how often an idle worker looks for a task it may start


class _WaveView:
    """The waveforms of some of a corpus's utterances, as a sequence (pre-training input)."""

    def __init__(self, corpus: EmotionCorpus, indices: tuple[int, ...], what: str) -> None:
        self.corpus = corpus
        self.indices = indices
        self.skipped: list[str] = []
        self.description = f"{corpus.description}: {what} ({len(indices)} utterances)"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.corpus.wave(self.indices[i])

    def fingerprint(self) -> str:
        """The corpus's identity and which of its utterances these are."""
        key = {"corpus": self.corpus.identity(), "indices": list(self.indices)}
        return cache_key(key)


def open_corpus(config: ExperimentConfig) -> EmotionCorpus:
    """The labelled corpus ``config`` names (through the corpus registry)."""
    return open_emotion_corpus(
        config.dataset,
        config.root,
        subset=config.subset,
        test_set=config.test_set,
        skip_bad=config.skip_bad,
        synthetic_size=config.synthetic_size,
        data_seed=config.data_seed,
    )


def _selected_folds(corpus: EmotionCorpus, config: ExperimentConfig) -> list[Fold]:
    """The corpus's folds, restricted to ``config.folds`` (1-based) when given."""
    folds = corpus.folds(config.validation, seed=config.split_seed)
    if config.folds is None:
        return folds
    too_big = [f for f in config.folds if f > len(folds)]
    if too_big:
        raise UserInputError(f"`folds` {too_big}: {corpus.name} has {len(folds)} fold(s)")
    return [folds[f - 1] for f in sorted(set(config.folds))]


# Worker processes that decode a labelled corpus into its prepared cache (fewer on fewer
# cores): decoding is a few ms a file, so more would wait on the disk.
_PREPARE_WORKERS = min(8, available_cpus())


class Runner:
    def __init__(self, config: ExperimentConfig, env: DistEnv, progress: bool) -> None:
        self.config = config
        self.env = env
        self.progress = progress and env.is_main
        self.out = Path(config.out)
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else self.out / "cache"
        self.corpus = open_corpus(config)
        converted = self.corpus.conversions and self.corpus.conversions.summary()
        if converted and self.progress:  # once per run, never per file
            tqdm.write(converted, file=sys.stderr)
        # Every file decoded once before any fold is made: one that fails when read is
        # listed (or skipped and counted with `skip_bad`) now, not hours in.
        bad = self._unreadable()
        self.corpus.drop_unreadable(bad, config.skip_bad)
        numbers = {
            f.name: k for k, f in enumerate(self.corpus.folds(config.validation, config.split_seed))
        }
        # (index among ALL the corpus's folds, fold): seeds do not depend on --folds
        self.folds = [(numbers[f.name], f) for f in _selected_folds(self.corpus, config)]
        self._pretrained: tuple[torch.nn.Module, str] | None = None
        self._claim: Claim | None = None  # the task this worker holds (rank 0)
        self._features: dict[str, FeatureSet] = {}  # by "lfbe", "cpc-<digest>", "ssl-<name>"
        self.board_host = socket.gethostname()
        self.place = UnitPlace(config, self.corpus, env, self.out, self.progress, self.board_host)
        # The ssl setup: one unit setup per upstream; their weights' identities (loaded once
        # per worker), the one model held for extracting, the cache entries.
        self.upstreams = dict(config.upstreams())
        self.setups = unit_setups(config.setups, list(self.upstreams))
        self._upstream_infos: dict[str, UpstreamInfo] = {}
        self._upstream: tuple[str, Upstream] | None = None
        self._ssl_caches: dict[str, SSLFeatureCache] = {}
        self._samples: list[int] | None = None

    # -- inputs --------------------------------------------------------------------------

    def _unreadable(self) -> list[tuple[int, str]]:
        """Every audio file decoded once into the prepared corpus (``<cache>/prepared``,
        keyed by the files' fingerprint, so a resumed experiment decodes nothing), which
        later reads come from; the files that fail. Rank 0 prepares, the others then open."""

        def prepare() -> list[tuple[int, str]]:
            say = (lambda line: tqdm.write(line, file=sys.stderr)) if self.progress else None
            return self.corpus.prepare(
                self.cache_dir / "prepared",
                workers=_PREPARE_WORKERS,
                progress=self.progress,
                info=say,
            )

        bad = on_main_then_broadcast(self.env, prepare)  # an error stops every rank
        return bad if self.env.is_main else prepare()  # complete now: opened, not decoded

    def _bar(self, desc: str):
        if not self.progress:
            return None
        return lambda it: tqdm(it, desc=desc, leave=False, unit="utt", dynamic_ncols=True)

    def _on_main_then_all(self, build):
        """Runs ``build`` on rank 0 first (it fills the cache), then on the other ranks."""
        result = build() if self.env.is_main else None
        barrier()
        return result if self.env.is_main else build()

    def _remembered(self, key: str, build) -> FeatureSet:
        # Once per worker: finding the cache entry hashes the corpus's audio (for the
        # synthetic corpus it synthesises every utterance: 2 s at the demo's size).
        if key not in self._features:
            self._features[key] = self._on_main_then_all(build)
        return self._features[key]

    def lfbe(self) -> FeatureSet:
        return self._remembered(
            "lfbe",
            lambda: lfbe_features(self.corpus, self.cache_dir, progress=self._bar("LFBE")),
        )

    def cpc_features(self, model: torch.nn.Module, digest: str, what: str) -> FeatureSet:
        return self._remembered(
            f"cpc-{digest}",
            lambda: cpc_context_features(
                self.corpus,
                model,
                self.cache_dir,
                device=self.env.device,
                digest=digest,
                progress=self._bar(f"CPC contexts ({what})"),
            ),
        )

    # -- the ssl setup --------------------------------------------------------------------

    def upstream(self, name: str) -> Upstream:
        """The model of upstream ``name``, loaded (one at a time per worker: the one last
        asked for is held) onto this worker's device."""
        if self._upstream is None or self._upstream[0] != name:
            self._upstream = None  # the previous one's memory first
            upstream = load_upstream(self.upstreams[name]).to(self.env.device)
            self._upstream_infos[name] = upstream.info
            self._upstream = (name, upstream)
        return self._upstream[1]

    def upstream_info(self, name: str) -> UpstreamInfo:
        if name not in self._upstream_infos:
            self.upstream(name)
        return self._upstream_infos[name]

    def ssl_cache(self, setup: str) -> SSLFeatureCache:
        """The feature cache entry of unit setup ``ssl-<name>`` (planned: its parts)."""
        if setup not in self._ssl_caches:
            if self._samples is None:  # every utterance's length, read once per worker
                self._samples = [self.corpus.num_samples(i) for i in range(len(self.corpus))]
            cfg = self.config
            # The workers' device, not this process's: a launcher on the CPU plans the
            # entry its GPU workers fill.
            cuda = cfg.device_gpus > 0 and torch.cuda.is_available()
            self._ssl_caches[setup] = SSLFeatureCache(
                self.corpus,
                self.upstream_info(setup[len(SSL_PREFIX) :]),
                LayerChoice.parse(cfg.ssl_layers),
                self.cache_dir,
                chunk_seconds=cfg.ssl_chunk_seconds,
                precision=cfg.ssl_precision if cuda else "fp32",
                samples=self._samples,
            )
        return self._ssl_caches[setup]

    def ssl_features(self, setup: str, part: int | None) -> FeatureSet | None:
        """Builds part ``part`` (1-based) of ``setup``'s extraction, or, with None, writes
        the entry (building any part still missing) and returns its features."""
        cache = self.ssl_cache(setup)
        name = setup[len(SSL_PREFIX) :]

        def build() -> None:
            settings = {"batch_seconds": self.config.ssl_batch_seconds, "progress": self.progress}
            if part is not None:
                cache.build_part(part - 1, self.upstream(name), **settings)
            elif not all(cache.entry.part_done(k) for k in range(cache.num_parts)):
                cache.build(self.upstream(name), **settings)

        if self.env.is_main and not cache.complete():
            build()
        barrier()
        if part is not None:
            return None
        return self._remembered(setup, cache.finish)

    def _ssl_inputs(self, setup: str, features: FeatureSet) -> dict:
        cache = self.ssl_cache(setup)
        info, choice = cache.info, cache.choice
        stacked = choice.stored_states(info.num_states) if choice.mode == "weighted" else 0
        reference = {
            "name": setup[len(SSL_PREFIX) :],
            **info.to_dict(),
            "layers": choice.spec,
            "chunk_samples": cache.chunk,
            "precision": cache.precision,
            "storage": STORAGE,
        }
        return {
            "features": features,
            "reference": {"kind": "ssl", "ssl": reference},
            "stacked_states": stacked,
        }

    def pretrained(self) -> tuple[torch.nn.Module, str, Path]:
        path = Path(self.config.pretrained).resolve()
        if self._pretrained is None:
            model = load_cpc_checked(path)
            self._pretrained = (model, module_digest(model))
        return (*self._pretrained, path)

    def mini_cpc(self, fold: Fold, *, train: bool) -> tuple[torch.nn.Module, str, Path]:
        """The fold's miniCPC: pre-trained now (``train``, its prep task), or loaded."""
        run_dir = self.out / "mini" / fold.name / "cpc"
        if not train:
            model = load_cpc(run_dir)
            return model, module_digest(model), run_dir.resolve()
        path = pretrain(
            self.config.pretrain_config(),
            _WaveView(self.corpus, fold.train, f"{fold.name} training audio"),
            _WaveView(self.corpus, fold.validation, f"{fold.name} validation audio"),
            run_dir,
            env=self.env,
            progress=self.progress,
        )
        if stop_agreed(self.env):  # signalled in its last step: its contexts can wait
            raise Preempted(requested(), f"the miniCPC of {fold.name} is done in {run_dir}")
        model = load_cpc(path)
        return model, module_digest(model), Path(path).resolve()

    # -- one unit ------------------------------------------------------------------------

    def prepare(self, setup: str, fold: Fold, *, build: bool = False, part: int = 0) -> dict:
        """A unit's inputs (``build``: the prep task that makes them first; ``part``: only
        that part of an SSL extraction)."""
        if is_ssl(setup):
            features = self.ssl_features(setup, part or None) if build else None
            if part:
                return {}
            return self._ssl_inputs(setup, features or self.ssl_features(setup, None))
        if setup == "sup":
            return {
                "features": self.lfbe(),
                "reference": {"kind": "lfbe", "lfbe": LFBEConfig().to_dict()},
            }
        if setup in ("pre", "mini"):
            if setup == "pre":
                model, digest, path = self.pretrained()
            else:
                model, digest, path = self.mini_cpc(fold, train=build)
            what = "pretrained" if setup == "pre" else f"mini {fold.name}"
            return {
                "features": self.cpc_features(model, digest, what),
                "reference": {"kind": "cpc", "cpc": {"path": str(path), "digest": digest}},
            }
        return {}

    # -- all tasks -----------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        cfg = self.config
        manifest = {
            "config": cfg.to_dict(),
            "dataset": self.corpus.name,
            "description": self.corpus.description,
            "protocol": _protocol(self.corpus, cfg, len(self.folds)),
            "num_utterances": len(self.corpus),
            "skipped_rows": self.corpus.skipped,
            "folds": [f.name for _, f in self.folds],
            "data": self.corpus.identity(),
        }
        if "pre" in cfg.setups:  # loaded now: a model that diverged is refused before any work
            manifest["pretrained_digest"] = self.pretrained()[1]
        if self.upstreams:  # loaded now: a folder that is no model is refused before any work
            manifest["upstreams"] = {
                name: {
                    k: v
                    for k, v in self.upstream_info(name).to_dict().items()
                    if k in ("source", "digest", "model_type", "num_states", "hidden_size")
                }
                for name in self.upstreams
            }
            choice = LayerChoice.parse(cfg.ssl_layers)
            for name in self.upstreams:
                problem = choice.problem(self.upstream_info(name).num_states)
                if problem:
                    raise UserInputError(f"`ssl_layers` {choice.spec} {problem} ({name})")
        return manifest

    def check_folder(self) -> None:
        """Refuses another experiment's folder; writes the manifest (every rank raises)."""
        manifest = self.manifest()
        on_main_then_broadcast(
            self.env,
            lambda: briefly_locked(self.out, lambda: check_experiment_folder(self.out, manifest)),
        )

    def tasks(self) -> list[Task]:
        """Every task of this experiment, in start order (:func:`~.schedule.plan`)."""
        parts = {s: self.ssl_cache(s).num_parts for s in self.setups if is_ssl(s)}
        return plan(self.setups, self.folds, self.config.runs, parts)

    def units_done(self) -> tuple[int, int]:
        """(units whose folder holds ``done``, all units), read from the folder."""
        units = [t for t in self.tasks() if t.kind == "unit"]
        return sum(self._done(t) for t in units), len(units)

    def _done(self, task: Task) -> bool:
        if task.kind == "unit":
            return (task.unit_dir(self.out) / "done").is_file()
        return (self.out / CLAIMS / f"{task.name}.done").is_file()

    def _event(self, what: str, task: str) -> None:
        """One line of ``.claims/events.log`` (appended whole: lines of several workers
        never interleave)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        line = f"{stamp} {what} {task} {self.board_host} {os.getpid()}\n"
        path = self.out / CLAIMS / "events.log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _next(self, board: ClaimBoard, tasks: list[Task]) -> str | None:
        """Claims the first task that may start (waiting while others run what is left);
        None when every task is done, or what is left failed in this launch or waits for
        what did."""
        while True:
            pending = [t for t in tasks if not self._done(t)]
            if not pending:
                return None
            names = {t.name for t in pending}
            for task in pending:
                if names.intersection(task.needs):
                    continue  # its features or miniCPC are not ready
                # A signal while claiming waits: no claim is left half-written, or held by
                # a worker that is gone; one that came meanwhile hands the task back.
                with deferred():
                    claimed = self._take(board, task)
                if requested() is not None:
                    if claimed:
                        self._claim.release()
                        self._event("preempted", task.name)
                    raise Preempted(requested())
                if claimed:
                    return task.name
            failed = set()
            for task in pending:
                owner = board.owner(task.name)
                if owner is not None and owner.failed is not None and owner.launch == board.launch:
                    failed.add(task.name)
            if all(t.name in failed or failed.intersection(t.needs) for t in pending):
                return None
            time.sleep(POLL_SECONDS)

    def _take(self, board: ClaimBoard, task: Task) -> bool:
        """Claims ``task`` unless another worker holds it or it is done."""
        claim = board.try_claim(task.name)
        if claim is None:
            return False
        if self._done(task):  # finished between our look and the claim
            claim.release()
            return False
        self._claim = claim
        if claim.took_over is not None:
            dead = claim.took_over
            self._event(f"takeover-from:{dead.host}:{dead.pid}", task.name)
        self._event("start", task.name)
        return True

    def _run_task(self, task: Task, prepared: dict) -> None:
        if task.kind == "prep":
            self.prepare(task.setup, task.fold, build=True, part=task.part)
            return
        self._upstream = None  # units need no SSL model: its memory back
        key = (task.setup, task.fold.name)
        if prepared.get("for") != key:
            prepared.clear()
            prepared.update(self.prepare(task.setup, task.fold), **{"for": key})
        run_unit(self.place, task.setup, task.fold_index, task.fold, task.run, prepared)

    def run(self, launch: str) -> dict[str, Any] | None:
        """Runs tasks until none is left to start; returns the results when every task is
        done (None when what is left failed)."""
        self.check_folder()
        tasks = self.tasks()
        by_name = {t.name: t for t in tasks}
        board = ClaimBoard(self.out / CLAIMS, launch)
        units = [t for t in tasks if t.kind == "unit"]
        bar = tqdm(
            total=len(units),
            desc="experiment",
            unit="run",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        bar.update(sum(self._done(t) for t in units))
        prepared: dict = {}
        try:
            while True:
                if stop_agreed(self.env):  # preempted during the last task: start no other
                    raise Preempted(requested())
                name = on_main_then_broadcast(self.env, lambda: self._next(board, tasks))
                if name is None:
                    break
                task = by_name[name]
                bar.set_postfix_str(name)
                try:
                    self._run_task(task, prepared)
                except BaseException as exc:
                    if self.env.is_main:
                        self._claim.__exit__(type(exc), exc, exc.__traceback__)
                        if isinstance(exc, Exception):
                            self._event("failed", name)
                        elif isinstance(exc, Preempted):
                            self._event("preempted", name)
                    raise
                if self.env.is_main:
                    if task.kind == "prep":
                        atomic_write_bytes(self.out / CLAIMS / f"{name}.done", b"")
                    self._claim.release()
                    self._event("done", name)
                bar.update(task.kind == "unit")
        finally:
            bar.close()
        complete = on_main_then_broadcast(self.env, lambda: all(self._done(t) for t in tasks))
        if not complete:
            return None
        results = write_report(self.out) if self.env.is_main else None
        return broadcast_object(results)


def briefly_locked(out: Path, action):
    """``action()`` under the folder's lock, waiting (a minute at most) while another
    launch holds it: it is held only to check or change the folder, never while training."""
    lock = FolderLock(out, "experiment folder")
    deadline = time.monotonic() + 60.0
    while True:
        try:
            lock.acquire()
            break
        except UserInputError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        return action()
    finally:
        lock.release()


def _protocol(corpus: EmotionCorpus, config: ExperimentConfig, num_folds: int) -> str:
    if corpus.protocol == "sessions":
        return f"leave-one-session-out, {num_folds} fold(s), validation: {config.validation}"
    return f"official train/validation/test split, validation: {config.validation} if carved"


__all__ = ["Runner", "briefly_locked", "open_corpus"]
