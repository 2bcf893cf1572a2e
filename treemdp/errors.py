"""The one exception type for bad user input; the CLI turns it into ``error: ...`` and exit 2."""


class UserError(ValueError):
    """Input a user can fix (bad file, bad value, bad name). The message is one line."""
