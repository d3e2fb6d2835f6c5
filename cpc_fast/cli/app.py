"""The ``cpc-fast`` typer application and its entry point.

Commands live in sibling modules (``info``, ``pretrain``, ...) and register themselves on
``app``; ``main`` turns user mistakes and errors of the system (a full disk, a folder it may
not write, too many open files) into one line on stderr and exit status 2, worded for the
command line: the library names its arguments in backticks (```batch_size```), which
become the command's flags (``--batch-size``). The preemption signals (SIGTERM, SIGUSR1,
SIGUSR2 by default: :mod:`cpc_fast.training.preemption`) stop a training run after its step
in flight, saved, and anything else where it is, as Ctrl-C does, so that its clean-ups
(temporary files, the run folder's lock, claims) run.

Exit statuses: 0 done; 1 a bug (with its traceback) or a worker that failed so; 2 a mistake
of the user or an error of the system (one ``error:`` line); 75 preempted, the work saved:
run the same command again to resume; 130 Ctrl-C; a launched worker's own status otherwise.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Mapping

import typer

from cpc_fast.cli.options import FLAGS
from cpc_fast.errors import UserInputError
from cpc_fast.training import distributed, preemption
from cpc_fast.training.distributed import WorkerFailed
from cpc_fast.training.preemption import PREEMPTED_EXIT_STATUS, Preempted

app = typer.Typer(
    name="cpc-fast",
    help="Fast CPC pre-training and speech emotion recognition (Li et al., ICASSP 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_argv: list[str] = []
_ARGUMENT = re.compile(r"(with )?`([A-Za-z_][\w.]*)(?:=([^`]*))?`")


def invoked_argv() -> list[str]:
    """The arguments this process was started with (what a multi-process launch repeats)."""
    return list(_argv)


def command_line_wording(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each backticked argument as the command's flag: ```lr``` -> ``--lr``,
    ```path=PATH``` -> ``--data PATH``, ```strict=True``` -> ``--strict``,
    ```strict=False``` -> ``without --strict``; other names lose their backticks."""

    def flag(match: re.Match) -> str:
        with_, name, value = match.group(1) or "", match.group(2), match.group(3)
        known = flags.get(name.rpartition(".")[2])
        if known is None:
            return with_ + (name if value is None else f"{name}={value}")
        on, _, off = known.partition("/")
        if value == "False":  # "with `strict=False`" reads "without --strict"
            return off or f"without {on}"
        return with_ + (on if value in (None, "True") else f"{on} {value}")

    return _ARGUMENT.sub(flag, message)


@app.callback()
def _root() -> None:
    """Fast CPC pre-training and speech emotion recognition (Li et al., ICASSP 2021)."""


_OS_HINTS = {
    errno.ENOSPC: "free some space, then run the same command again: a training run resumes "
    "from its last checkpoint",
    errno.EDQUOT: "the disk quota is used up; free some space, then run the same command again",
    errno.EMFILE: "raise the open-file limit (ulimit -n) or use fewer --workers",
    errno.ENFILE: "the whole system has too many open files: use fewer --workers",
}


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError``: the file, what went wrong and, for a full disk or too
    many open files, what to do."""
    if exc.errno is None or exc.strerror is None:
        return str(exc)
    where = f"{exc.filename}: " if exc.filename is not None else ""
    hint = _OS_HINTS.get(exc.errno)
    return f"{where}{exc.strerror}" + (f" ({hint})" if hint else "")


def _exit_launched_worker(status: int = 0) -> None:
    """Ends a torchrun worker whose command succeeded (or was preempted, its work saved)
    without the interpreter's teardown.

    Its files are written (atomically) and closed, and its process group destroyed; what is
    left to tear down are gloo's and the store's native threads, and that teardown sometimes
    aborts (``terminate called without an active exception``, SIGABRT), which torchrun
    reports as a failed worker after the work succeeded. Nothing of the work depends on it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI. ``argv`` defaults to ``sys.argv[1:]``.

    Click reports its own usage errors (exit 2); a :class:`UserInputError` or an
    ``OSError`` becomes one ``error:`` line and exit status 2; a worker of a multi-process
    launch that failed, one line and its exit status; a preemption, one line (from rank 0)
    and 75 (Ctrl-C is click's: "Aborted!" and 130); anything else is a bug and keeps its
    traceback.
    """
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    flags = FLAGS.get(_argv[0], {}) if _argv else {}
    restore = lambda: None  # noqa: E731 (until the handlers are installed)
    try:
        restore = preemption.install()
        app(args=_argv, prog_name="cpc-fast")
    except SystemExit as exc:
        if exc.code in (0, None) and distributed.under_launcher():
            _exit_launched_worker()
        raise
    except UserInputError as exc:
        typer.echo(f"error: {command_line_wording(str(exc), flags)}", err=True)
        raise SystemExit(2) from None
    except OSError as exc:
        typer.echo(f"error: {command_line_wording(os_error_line(exc), flags)}", err=True)
        raise SystemExit(2) from None
    except WorkerFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None
    except Preempted as exc:
        if os.environ.get("RANK", "0") == "0":  # one line for a launch, not one per rank
            typer.echo(exc.describe(), err=True)
        if distributed.under_launcher():
            _exit_launched_worker(PREEMPTED_EXIT_STATUS)
        raise SystemExit(PREEMPTED_EXIT_STATUS) from None
    finally:
        restore()
