"""The ``cpc-fast`` typer application and its entry point.

Commands live in sibling modules (``info``, ``pretrain``, ...) and register themselves on
``app``; ``main`` turns user mistakes into one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import typer

from cpc_fast.errors import UserInputError

app = typer.Typer(
    name="cpc-fast",
    help="Fast CPC pre-training and speech emotion recognition (Li et al., ICASSP 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_argv: list[str] = []


def invoked_argv() -> list[str]:
    """The arguments this process was started with (what a multi-process launch repeats)."""
    return list(_argv)


def relaunched(gpus: int) -> bool:
    """With ``--gpus N > 1`` outside a launcher, re-runs this command as N processes (blocking)
    and returns True; otherwise returns False and this process does the work."""
    from cpc_fast.training import distributed

    if not distributed.needs_launch(gpus):
        return False
    argv = invoked_argv()
    if not argv:
        raise UserInputError("--gpus N > 1 relaunches the command line: run it as cpc-fast")
    distributed.launch(gpus, argv)
    return True


@app.callback()
def _root() -> None:
    """Fast CPC pre-training and speech emotion recognition (Li et al., ICASSP 2021)."""


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI. ``argv`` defaults to ``sys.argv[1:]``.

    Click reports its own usage errors (exit 2); a :class:`UserInputError` or a missing file
    becomes one ``error:`` line and exit status 2; anything else is a bug and keeps its
    traceback.
    """
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=_argv, prog_name="cpc-fast")
    except (UserInputError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
