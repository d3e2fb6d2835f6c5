"""The exception types for problems a user can fix (bad paths, bad files, bad options, a
run that diverged).

The CLI prints these as a single line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UserInputError(ValueError):
    """A problem with the user's input: the message names the file, row or argument."""


class TrainingDiverged(UserInputError):
    """A loss, gradient or weight became NaN or infinite: the message names the step and the
    quantity; the last checkpoint written before it is kept."""


def naming(name: str, message: str) -> str:
    """``message`` prefixed with ``name`` (a file, a row) unless it names it already."""
    return message if name in message else f"{name}: {message}"


def require_extra(module: str, what: str, extra: str) -> ModuleType:
    """The optional ``module`` (one of the ``extra``'s packages), imported when first needed,
    or a :class:`UserInputError` line: what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserInputError(
            f"{what} needs {module.partition('.')[0]}: pip install 'cpc-fast[{extra}]' ({exc})"
        ) from None
