"""The one exception type for mistakes a user can fix (bad paths, bad files, bad options).

The CLI prints these as a single line; anything else is a bug and keeps its traceback.
"""


class UserInputError(ValueError):
    """A problem with the user's input: the message names the file, row or argument."""
