"""``cpc-fast demo``: the paper's pipeline at toy scale on the built-in synthetic corpora."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from cpc_fast import demo as pipeline
from cpc_fast.cli.app import app
from cpc_fast.cli.options import Quiet, ShowProgress, shows_progress


@app.command()
def demo(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for every output; re-running resumes. Default: cpc_fast_demo, or "
            "cpc_fast_demo_quick with --quick."
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Shorter training: about 2 minutes on 2 CPU cores.")
    ] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Delete OUT's earlier demo outputs and start over.")
    ] = False,
    progress: ShowProgress = True,
    quiet: Quiet = False,
) -> None:
    """Pre-train a tiny CPC, train Sup/jointCPC/miniCPC/preCPC under cross-validation and draw
    the figures, all on synthetic data on this machine's CPU (5-13 minutes on 2 cores)."""
    out = out or Path("cpc_fast_demo_quick" if quick else "cpc_fast_demo")
    if restart:
        _clear(out)
    result = pipeline.run_demo(out, quick=quick, progress=shows_progress(progress, quiet))
    typer.echo(pipeline.summary_text(result))


def _clear(out: Path) -> None:
    """Removes only what the demo writes, so a mistyped --out cannot wipe other files."""
    for name in ("cpc", "experiment"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("results.md", "results.json", "tsne.png", "training_curves.png", "demo.json"):
        (out / name).unlink(missing_ok=True)
