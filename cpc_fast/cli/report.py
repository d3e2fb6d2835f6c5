"""``cpc-fast report``: re-render the tables of an experiment folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cpc_fast.cli.app import app
from cpc_fast.emotion.report import render_markdown, write_report


@app.command()
def report(
    folder: Annotated[
        Path, typer.Argument(help="An experiment folder (cpc-fast experiment --out).")
    ],
) -> None:
    """Re-aggregate the finished runs of FOLDER; rewrite and print results.md / results.json."""
    results = write_report(folder)
    typer.echo(render_markdown(results))
