"""The ``cpc-fast`` command line. Importing this module registers every command."""

from cpc_fast.cli import (  # noqa: F401
    demo,
    experiment,
    export,
    info,
    predict,
    pretrain,
    report,
)
from cpc_fast.cli.app import app, invoked_argv, main

__all__ = ["app", "invoked_argv", "main"]
