"""The one exception type for mistakes a user can make (bad values, unknown names).

The CLI prints it as one line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: the message names the bad value."""
