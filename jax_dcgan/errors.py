"""The one exception type the command line turns into a message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: what is wrong, where, and how to fix it, in one paragraph."""
    exit_code = 2
