"""The one exception type the CLI turns into a single line and exit code 2."""


class EdgecnnError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name.

    The message names the thing at fault (file, flag, node, key) and is shown
    to the user as one line, without a traceback.
    """
