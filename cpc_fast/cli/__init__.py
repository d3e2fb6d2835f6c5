"""The ``cpc-fast`` command line. Importing this module registers every command."""

from cpc_fast.cli import experiment, predict, report  # noqa: F401  (register the commands)
from cpc_fast.cli import info  # noqa: F401  (registers the command)
from cpc_fast.cli import pretrain  # noqa: F401  (registers the command)
from cpc_fast.cli.app import app, invoked_argv, main

__all__ = ["app", "invoked_argv", "main"]
