"""``cpc-fast info``: versions and which fast paths can run here."""

from __future__ import annotations

import json

import typer

from cpc_fast.cli.app import app
from cpc_fast.env import collect_info


@app.command()
def info(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Show versions, whether the C++ extension is built and whether the fused GPU loss can run."""
    report = collect_info()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    width = max(len(k) for k in report)
    for key, value in report.items():
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        elif value is None:
            value = "not installed"
        typer.echo(f"{key.ljust(width)}  {value}")
