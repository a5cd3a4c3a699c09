"""The one exception type a user can cause; the CLI prints it as a single line."""


class RetrodbError(Exception):
    """A problem with the user's input, options or database, worded for the user.

    The message names the file or option at fault and what to do about it.
    """
