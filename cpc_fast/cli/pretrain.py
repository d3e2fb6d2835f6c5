"""``cpc-fast pretrain``: CPC pre-training on LibriSpeech, any audio folder, or the built-in
synthetic corpus, on one process, N local GPUs (``--gpus N``) or under torchrun.

    cpc-fast pretrain --out runs/demo --preset tiny                   # synthetic, CPU
    cpc-fast pretrain --data /data/LibriSpeech --out runs/ls100 --gpus 8
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 \\
        -m cpc_fast pretrain --data /data/LibriSpeech --out runs/ls100
    cpc-fast pretrain --data /data/LibriSpeech --out runs/ls100 --gpus 8 \\
        --launcher slurm --nodes 2 --time 24:00:00     # a SLURM job (cpc_fast.cli.slurm)

Running the same command again resumes from the run folder's last checkpoint; a preemption
signal saves the step in flight first (exit status 75). The options
that configure the run come from the fields of
:class:`~cpc_fast.config.pretrain.PretrainConfig` (:mod:`cpc_fast.cli.options`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import torch
import typer

from cpc_fast.cli.app import app
from cpc_fast.cli.launch import check_counts, device_gpus, relaunched
from cpc_fast.cli.options import Overrides, Quiet, ShowProgress, config_options, shows_progress
from cpc_fast.cli.slurm import SlurmOptions, check_options, slurm_options, submit
from cpc_fast.config import pretrain as presets
from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.io.atomic import check_writable_folder
from cpc_fast.training import distributed
from cpc_fast.training.data import open_pretrain_data
from cpc_fast.training.pretrain import pretrain as run_pretrain

_MAX_WARNINGS = 20  # bad files named one per line; beyond this, one summary line


class _IndexWarnings:
    """Prints the first bad files one per line, then counts the rest."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= _MAX_WARNINGS:
            typer.echo(f"warning: {message}", err=True)

    def close(self) -> None:
        if self.count > _MAX_WARNINGS:
            typer.echo(
                f"warning: ... and {self.count - _MAX_WARNINGS} more files skipped "
                f"({self.count} in all)",
                err=True,
            )


def _open_data(config: PretrainConfig, env: distributed.DistEnv):
    """Rank 0 indexes the corpus (headers only) and sends the datasets to every rank."""

    def index():
        warn = _IndexWarnings()
        try:
            return open_pretrain_data(
                config.data,
                seed=config.seed,
                sample_rate=config.model.sample_rate,
                min_samples=config.min_samples,
                strict=config.strict,
                warn=warn,
            )
        finally:
            warn.close()

    return distributed.on_main_then_broadcast(env, index)


def _use_cores(config: PretrainConfig, env: distributed.DistEnv, progress: bool) -> None:
    """Each CPU process takes its share of the cores (``--threads``), and rank 0 says so
    first: torch's own default counts the machine's cores, not those this process may use."""
    if env.device.type == "cpu":
        # torchrun (and --cpu-processes, through it) says how many share this host
        plan = config.cpu_plan(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if plan.threads:
            torch.set_num_threads(plan.threads)
        line = plan.describe("process")
    else:
        line = f"{env.world_size} process(es), one GPU each"
    if progress and env.is_main:
        typer.echo(f"pretrain: {line}", err=True)


@app.command()
@config_options(
    PretrainConfig,
    presets.PRESETS,
    flags={"out_dir": "--out", "restart": "--restart", "preset": "--preset"},
)
@slurm_options
def pretrain(
    out: Annotated[Path, typer.Option("--out", help="Run folder (created; resumed if it exists).")],
    preset_name: Annotated[
        str, typer.Option("--preset", help=f"Base configuration: {', '.join(presets.PRESETS)}.")
    ] = "paper",
    overrides: Overrides | None = None,
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Start over, deleting the run folder's checkpoint files."),
    ] = False,
    progress: ShowProgress = True,
    quiet: Quiet = False,
    slurm: SlurmOptions | None = None,
) -> None:
    """Pre-train a CPC model (Li et al. 2021): 10-s windows, Adam 2e-4, 8 per GPU."""
    config = overrides.apply(presets.preset(preset_name))
    progress = shows_progress(progress, quiet)
    check_options(slurm, restart=restart)
    gpus, cpu_processes = config.gpus, config.cpu_processes
    if slurm.submits:  # --gpus and --cpu-processes are per node, on the cluster's nodes
        check_counts(gpus, cpu_processes)
        check_writable_folder(out, "`out_dir`")
        per_node = cpu_processes or max(gpus, 1)
        submit(
            "pretrain",
            slurm,
            out=out,
            processes_per_node=per_node,
            gpus_per_node=0 if cpu_processes else gpus,
        )
        return
    if relaunched(gpus, cpu_processes):
        return
    env = distributed.init(device_gpus(gpus, cpu_processes))
    try:
        # A folder it may not write is refused before the corpus is indexed.
        distributed.on_main_then_broadcast(env, lambda: check_writable_folder(out, "`out_dir`"))
        train, valid, data = _open_data(config, env)
        config = config.replace(data=data)
        _use_cores(config, env, progress)  # its line first, once the arguments are good
        run_pretrain(config, train, valid, out, env=env, progress=progress, restart=restart)
    finally:
        distributed.shutdown()
