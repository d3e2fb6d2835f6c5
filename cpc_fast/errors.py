"""The exception types for problems a user can fix (bad paths, bad files, bad options, a
run that diverged).

The CLI prints these as a single line; anything else is a bug and keeps its traceback.
"""


class UserInputError(ValueError):
    """A problem with the user's input: the message names the file, row or argument."""


class TrainingDiverged(UserInputError):
    """A loss, gradient or weight became NaN or infinite: the message names the step and the
    quantity; the last checkpoint written before it is kept."""


def naming(name: str, message: str) -> str:
    """``message`` prefixed with ``name`` (a file, a row) unless it names it already."""
    return message if name in message else f"{name}: {message}"
