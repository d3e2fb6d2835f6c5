"""Launching the experiment's workers: how many, on which device, and the results once
they are gone (the worker loop itself is :class:`cpc_fast.emotion.experiment.Runner`).

    from cpc_fast.config import experiment
    from cpc_fast.emotion.launch import run_experiment
    results = run_experiment(experiment.tiny(setups=("sup", "joint"), out="exp"))

One process is one worker; ``--cpu-processes N`` starts N CPU workers here, ``--gpus N``
one per GPU and ``--workers-per-gpu K`` K on each, and a launch that uses no GPU one per
core, at most the units left (:func:`local_workers`); under torchrun
each process is a worker on its local GPU; ``ddp`` makes a DDP group one worker. Workers
share the folder's tasks through its claims, so any number of launches can run at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cpc_fast.config.experiment import ExperimentConfig
from cpc_fast.emotion.experiment import Runner, briefly_locked
from cpc_fast.emotion.experiment_folder import CLAIMS_NAME as CLAIMS
from cpc_fast.emotion.experiment_folder import clear_experiment
from cpc_fast.emotion.schedule import unit_setups
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import check_writable_folder, read_json
from cpc_fast.io.claims import ClaimBoard, new_launch_id
from cpc_fast.io.cpus import available_cpus, intra_op_threads
from cpc_fast.training.distributed import (
    DistEnv,
    WorkerFailed,
    broadcast_object,
    init,
    on_main_then_broadcast,
    under_launcher,
)
from cpc_fast.training.preemption import PREEMPTED_EXIT_STATUS, Preempted
from cpc_fast.training.workers import gpu_of_worker, run_workers


def run_experiment(
    config: ExperimentConfig,
    *,
    progress: bool = True,
    env: DistEnv | None = None,
    restart: bool = False,
) -> dict[str, Any] | None:
    """Runs every unfinished task of ``config`` and returns the results dict (also written
    to ``<config.out>/results.json`` and ``results.md``), or None when some failed (each
    worker has printed why; the finished ones are kept, a re-run retries the rest).

    Workers (module docstring): ``env`` (a DDP group) or ``config.ddp`` makes the processes
    of the group one worker; under torchrun each process is a worker on its local GPU;
    otherwise ``gpus`` (> 1) or ``cpu_processes`` (> 1) workers are started here, or,
    where no GPU is used and ``cpu_processes`` is not given, one per core (at most the units
    left), or this process is the one worker. A folder that holds another experiment is refused
    (:mod:`.experiment_folder`); ``restart`` deletes that experiment's files first, refused
    while a worker runs a task there. The folder is checked to be writable before any work.
    """
    config.validate()
    out = Path(config.out)
    if env is not None or config.ddp:
        env = env or init(config.device_gpus)
        on_main_then_broadcast(env, lambda: _start(out, restart))
        launch = broadcast_object(new_launch_id())
        return _work(config, env, progress, launch)
    if under_launcher():  # torchrun or SLURM + torchrun: one worker per process
        run_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")
        launch = f"{run_id}-{os.environ.get('GROUP_RANK', '')}" if run_id else new_launch_id()
        slot = int(os.environ["LOCAL_RANK"])
        return _worker(config, slot, launch, progress and slot == 0, restart)
    workers = local_workers(config)
    if workers == 1:
        _announce(config, 1, progress)
        return _worker(config, 0, new_launch_id(), progress, restart)
    _start(out, restart)
    # The settings and data are checked once here, so a mistake is one line, not N; the
    # corpus is decoded here too, with its progress shown.
    here = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))  # no CUDA
    runner = Runner(config, here, progress=progress)
    runner.check_folder()
    if _fills_cpu(config):  # no more workers than units left to train
        done, units = runner.units_done()
        workers = max(1, min(workers, units - done))
    _announce(config, workers, progress)
    launch = new_launch_id()
    if workers == 1:
        return _work(config, here, progress, launch, runner)
    with _UnitsBar(runner, progress) as bar:
        args = [(config, i, launch, False, False) for i in range(workers)]
        codes = run_workers(_worker, args, on_wait=bar.refresh)
    return _collect(config, codes)


def local_workers(config: ExperimentConfig) -> int:
    """How many workers a launch of ``config`` starts here (without torchrun or ``ddp``):
    ``cpu_processes``; or ``workers_per_gpu`` on each of ``gpus`` GPUs; or, where no GPU is
    used (``gpus=0``, or no CUDA device), one per core this process may use
    (:func:`~cpc_fast.io.cpus.available_cpus`; :func:`run_experiment` then starts no more
    than there are units left). Refuses ``workers_per_gpu`` > 1 without GPUs to share or
    with ``ddp``."""
    share = config.workers_per_gpu
    if share > 1:
        if config.cpu_processes or config.gpus == 0:
            raise UserInputError(
                f"`workers_per_gpu={share}` shares GPUs between workers: it needs `gpus` "
                "N >= 1 (for CPU workers use `cpu_processes`)"
            )
        if config.ddp:
            raise UserInputError(
                f"`workers_per_gpu={share}` runs whole units side by side: not with `ddp`"
            )
        if not torch.cuda.is_available():
            raise UserInputError(
                f"`workers_per_gpu={share}`: no CUDA GPU is visible here (for CPU workers "
                "use `cpu_processes`)"
            )
    if config.cpu_processes:
        return config.cpu_processes
    if _fills_cpu(config):
        return available_cpus()
    return config.gpus * share


def _fills_cpu(config: ExperimentConfig) -> bool:
    """Whether the launch picks its own CPU workers: no ``cpu_processes`` and no GPU."""
    return config.cpu_processes is None and not config.uses_cuda(_cuda_devices())


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _announce(config: ExperimentConfig, workers: int, progress: bool) -> None:
    """The launch's first line: how many workers, on what (stderr; not with ``progress``
    off)."""
    if not progress:
        return
    if config.uses_cuda(_cuda_devices()):
        per_gpu = config.workers_per_gpu
        line = f"{workers} worker(s) on GPU: {per_gpu} per GPU, one unit at a time each"
    else:
        line = config.cpu_plan(workers).describe("worker") + ", one unit at a time each"
        if config.cpu_processes is None:
            line += " (the default without a GPU)"
    print(f"experiment: {line}", file=sys.stderr, flush=True)


class _UnitsBar:
    """The parent's view of its workers: a bar of the units done, read from the folder."""

    def __init__(self, runner: Runner, progress: bool) -> None:
        self.runner = runner
        done, units = runner.units_done()
        self.bar = tqdm(
            total=units,
            initial=done,
            desc="experiment",
            unit="run",
            disable=not progress,
            dynamic_ncols=True,
        )

    def refresh(self) -> None:
        done, _ = self.runner.units_done()
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> _UnitsBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _start(out: Path, restart: bool) -> None:
    check_writable_folder(out, "`out`")
    if restart:
        briefly_locked(out, lambda: _clear(out))


def _clear(out: Path) -> None:
    live = ClaimBoard(out / CLAIMS, launch="restart").live_owners()
    if live:
        raise UserInputError(
            f"{out}: a task is running there ({live[0].describe()}); stop every worker of "
            "this experiment before `restart`"
        )
    clear_experiment(out)


def _device_env(config: ExperimentConfig, slot: int) -> DistEnv:
    """A worker's place: on the CPU, or on a GPU shared by ``workers_per_gpu`` workers
    (:func:`~cpc_fast.training.workers.gpu_of_worker`, modulo those visible)."""
    if config.device_gpus > 0 and torch.cuda.is_available():
        index = gpu_of_worker(slot, config.workers_per_gpu, torch.cuda.device_count())
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistEnv(rank=0, world_size=1, local_rank=slot, device=device)


def _worker(
    config: ExperimentConfig, slot: int, launch: str, progress: bool, restart: bool
) -> dict[str, Any] | None:
    """One worker: claims and runs tasks until none is left to start."""
    _start(Path(config.out), restart)
    return _work(config, _device_env(config, slot), progress, launch)


def _work(
    config: ExperimentConfig,
    env: DistEnv,
    progress: bool,
    launch: str,
    runner: Runner | None = None,
) -> dict[str, Any] | None:
    # Fixed per unit: the intra-op thread count changes how sums are split, so bits.
    with intra_op_threads(config.cpu_plan(1).threads):
        return (runner or Runner(config, env, progress)).run(launch)


def _collect(config: ExperimentConfig, codes: list[int]) -> dict[str, Any] | None:
    """The results once the workers are gone, or :class:`WorkerFailed` (:class:`Preempted`
    when every worker that stopped early was preempted: each released its task)."""
    failed = [(i + 1, c) for i, c in enumerate(codes) if c != 0]
    results = completed_results(config)
    if failed and results is None and all(c == PREEMPTED_EXIT_STATUS for _, c in failed):
        raise Preempted(
            saved=f"finished units and the last epoch of the others are kept in {config.out}"
        )
    if failed:
        which = ", ".join(f"{i} (exit status {c})" for i, c in failed)
        what = f"worker(s) {which} of {len(codes)}"
        if results is None:
            raise WorkerFailed(
                f"{what} failed; their messages are above; finished units are kept: run the "
                "same command again to retry the rest",
                next((c for _, c in failed if c > 0), 1),
            )
        warn_complete(config, f"{what} exited abnormally")
    return results


def warn_complete(config: ExperimentConfig, what: str) -> None:
    """One line on stderr: a worker failed, but not the experiment (every unit is done and
    the tables are written), so the command succeeds."""
    print(
        f"warning: {what}, but every unit is done (a dead worker's unit is taken over): the "
        f"experiment is complete, {Path(config.out) / 'results.json'}",
        file=sys.stderr,
        flush=True,
    )


def completed_results(config: ExperimentConfig) -> dict[str, Any] | None:
    """The results of ``config``'s folder when every unit is done and the tables are
    written (read from the folder alone), else None."""
    path = Path(config.out) / "results.json"
    if not (_all_done(config) and path.is_file()):
        return None
    try:
        return read_json(path)
    except (OSError, UserInputError):
        return None


def _all_done(config: ExperimentConfig) -> bool:
    """Whether every unit of ``config`` has its ``done`` (read from the folder alone)."""
    out = Path(config.out)
    try:
        folds = read_json(out / "experiment.json")["folds"]
    except (OSError, UserInputError, KeyError):
        return False
    return all(
        (out / s / f / f"run{r}" / "done").is_file()
        for s in unit_setups(config.setups, [name for name, _ in config.upstreams()])
        for f in folds
        for r in range(1, config.runs + 1)
    )


__all__ = [
    "completed_results",
    "local_workers",
    "run_experiment",
    "warn_complete",
]
