"""The ``cpc-fast`` typer application and its entry point.

Commands live in sibling modules (``info``, ``pretrain``, ...) and register themselves on
``app``; ``main`` turns user mistakes into one line on stderr and exit status 2, worded for
the command line: the library names its arguments in backticks (```batch_size```), which
become the command's flags (``--batch-size``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping

import typer

from cpc_fast.cli.options import FLAGS
from cpc_fast.errors import UserInputError

app = typer.Typer(
    name="cpc-fast",
    help="Fast CPC pre-training and speech emotion recognition (Li et al., ICASSP 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_argv: list[str] = []
_ARGUMENT = re.compile(r"`([A-Za-z_][\w.]*)(?:=([^`]*))?`")


def invoked_argv() -> list[str]:
    """The arguments this process was started with (what a multi-process launch repeats)."""
    return list(_argv)


def command_line_wording(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each backticked argument as the command's flag: ```lr``` -> ``--lr``,
    ```path=PATH``` -> ``--data PATH``, ```strict=True``` -> ``--strict``,
    ```strict=False``` -> ``without --strict``; other names lose their backticks."""

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        known = flags.get(name.rpartition(".")[2])
        if known is None:
            return name if value is None else f"{name}={value}"
        on, _, off = known.partition("/")
        if value == "True":
            return on
        if value == "False":
            return off or f"without {on}"
        return on if value is None else f"{on} {value}"

    return _ARGUMENT.sub(flag, message)


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
        flags = FLAGS.get(_argv[0], {}) if _argv else {}
        typer.echo(f"error: {command_line_wording(str(exc), flags)}", err=True)
        raise SystemExit(2) from None
