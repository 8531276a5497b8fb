"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""


class UserError(Exception):
    """A mistake in the user's input (file, flag, config); its message says what and how to fix.

    Anything else that escapes is a bug and may raise a traceback.
    """
