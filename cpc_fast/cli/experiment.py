"""``cpc-fast experiment``: the paper's emotion-recognition experiments (Table 1).

The options come from the fields of :class:`~cpc_fast.config.experiment.ExperimentConfig`
(:mod:`cpc_fast.cli.options`); ``--preset`` picks the base the options change.

``--gpus N`` / ``--cpu-processes N`` start N workers, each running whole units (see
:mod:`cpc_fast.emotion.launch`); ``--gpus N --workers-per-gpu K`` starts N x K, K on each
GPU; under torchrun every process is a worker. ``--ddp``
trains each unit with DDP over the processes instead. ``--launcher slurm --nodes N`` submits
a SLURM job array of N such launches, one node each (:mod:`cpc_fast.cli.slurm`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cpc_fast.cli.app import app
from cpc_fast.cli.launch import check_counts, needs_launch, relaunched
from cpc_fast.cli.options import Overrides, Quiet, ShowProgress, config_options, shows_progress
from cpc_fast.cli.slurm import SlurmOptions, check_options, slurm_options, submit
from cpc_fast.config import experiment as presets
from cpc_fast.config.experiment import ExperimentConfig
from cpc_fast.emotion.launch import (
    completed_results,
    local_workers,
    run_experiment,
    warn_complete,
)
from cpc_fast.emotion.report import render_markdown
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import check_writable_folder
from cpc_fast.training import distributed
from cpc_fast.training.distributed import WorkerFailed


@app.command()
@config_options(
    ExperimentConfig,
    {"paper": presets.paper, "tiny": presets.tiny},
    flags={"preset": "--preset", "restart": "--restart"},
)
@slurm_options
def experiment(
    preset: Annotated[
        str, typer.Option(help="paper (the paper's recipe) or tiny (minutes on a CPU).")
    ] = "paper",
    overrides: Overrides | None = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start over: delete the --out folder's runs and results (the feature cache "
            "stays: it is keyed by content).",
        ),
    ] = False,
    progress: ShowProgress = True,
    quiet: Quiet = False,
    slurm: SlurmOptions | None = None,
) -> None:
    """Train and test the recognizer in the paper's setups; print Table 1 (CCC mean ± std)."""
    config = overrides.apply(presets.preset(preset))
    check_options(slurm, restart=restart)
    if slurm.submits:  # each array task is a launch of this command on a node of its own
        check_counts(config.gpus, config.cpu_processes)
        check_writable_folder(config.out, "`out`")
        per_node = config.cpu_processes or max(config.gpus, 1) * config.workers_per_gpu
        gpus = 0 if config.cpu_processes else config.gpus
        submit(
            "experiment",
            slurm,
            out=Path(config.out),
            processes_per_node=per_node,
            gpus_per_node=gpus,
        )
        return
    local_workers(config)  # refuses GPU sharing without GPUs at once, before any launch
    if config.ddp:
        # DDP per unit: rank 0 of the launched processes prints the table
        try:
            if relaunched(config.gpus, config.cpu_processes):
                return
        except WorkerFailed as exc:
            # A worker that dies after the tables are written (at exit) fails nothing.
            if completed_results(config) is None:
                raise
            warn_complete(config, str(exc).split(";")[0])
            return
        env = distributed.init(config.device_gpus)
        try:
            results = run_experiment(
                config, progress=shows_progress(progress, quiet), env=env, restart=restart
            )
        finally:
            distributed.shutdown()
        if not env.is_main:
            return
    else:
        needs_launch(config.gpus, config.cpu_processes)  # refuses impossible counts at once
        results = run_experiment(config, progress=shows_progress(progress, quiet), restart=restart)
    out = Path(config.out)
    if results is None:
        raise UserInputError(
            f"{out}: some tasks failed (their messages are above); finished units are kept: "
            "run the same command again to retry the rest"
        )
    typer.echo(render_markdown(results))
    typer.echo(f"results: {out / 'results.md'}, {out / 'results.json'}")
