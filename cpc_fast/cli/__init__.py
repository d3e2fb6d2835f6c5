"""The ``cpc-fast`` command line. Importing this module registers every command."""

from cpc_fast.cli import demo, experiment, info, predict, pretrain, report  # noqa: F401
from cpc_fast.cli.app import app, invoked_argv, main

__all__ = ["app", "invoked_argv", "main"]
