"""``cpc-fast experiment``: the paper's emotion-recognition experiments (Table 1).

The options come from the fields of :class:`~cpc_fast.config.experiment.ExperimentConfig`
(:mod:`cpc_fast.cli.options`); ``--preset`` picks the base the options change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cpc_fast.cli.app import app
from cpc_fast.cli.launch import relaunched
from cpc_fast.cli.options import Overrides, Quiet, config_options
from cpc_fast.config import experiment as presets
from cpc_fast.config.experiment import ExperimentConfig
from cpc_fast.emotion.experiment import run_experiment
from cpc_fast.emotion.report import render_markdown
from cpc_fast.training import distributed


@app.command()
@config_options(
    ExperimentConfig,
    {"paper": presets.paper, "tiny": presets.tiny},
    flags={"preset": "--preset", "restart": "--restart"},
)
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
    quiet: Quiet = False,
) -> None:
    """Train and test the recognizer in the paper's setups; print Table 1 (CCC mean ± std)."""
    config = overrides.apply(presets.preset(preset))
    # rank 0 of the launched processes prints the table
    if relaunched(config.gpus, config.cpu_processes):
        return
    env = distributed.init(config.device_gpus)
    try:
        results = run_experiment(config, progress=not quiet, env=env, restart=restart)
    finally:
        distributed.shutdown()
    if env.is_main:
        typer.echo(render_markdown(results))
        out = Path(config.out)
        typer.echo(f"results: {out / 'results.md'}, {out / 'results.json'}")
