"""The one exception type for user mistakes: the CLI prints its message as one sentence, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix (a flag, a file, a value); the message says what to do."""
