"""The exception types the CLI turns into a single line and exit code 2."""


class EdgecnnError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name.

    The message names the thing at fault (file, parameter, node, key) and is
    shown to the user as one line, without a traceback.
    """

    def for_cli(self) -> str:
        """The message as the command line shows it."""
        return str(self)


class ParameterError(EdgecnnError):
    """A bad argument value. The library names the parameter (`max_drop must be >= 0`);
    the CLI names its flag (`--max-drop must be >= 0`), so neither speaks the other's
    language. `message` continues the name: "must be at least 1, got 0"."""

    def __init__(self, parameter: str, message: str, *, flag: str | None = None) -> None:
        self.parameter, self.message = parameter, message
        self.flag = flag or f"--{parameter.replace('_', '-')}"  # when it is not the spelling
        super().__init__(f"{parameter} {message}")

    def for_cli(self) -> str:
        return f"{self.flag} {self.message}"
