"""The exception types the CLI turns into a single line and exit code 2."""

import re


class EdgecnnError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name.

    The message names the thing at fault (file, parameter, node, key) and is
    shown to the user as one line, without a traceback.
    """

    def for_cli(self) -> str:
        """The message as the command line shows it."""
        return str(self)


def flag(parameter: str) -> str:
    """The command-line spelling of a library parameter: max_drop -> --max-drop."""
    return f"--{parameter.replace('_', '-')}"


class ParameterError(EdgecnnError):
    """A bad argument value. The library names the parameter (`max_drop must be >= 0`);
    the CLI names its flag (`--max-drop must be >= 0`), so neither speaks the other's
    language. `message` continues the name: "must be at least 1, got 0". Other
    parameters it mentions are listed in `also` and written "{std}" in the message:
    shown as `std` by the library, `--std` by the CLI."""

    def __init__(self, parameter: str, message: str, *, flag: str | None = None,
                 also: tuple[str, ...] = ()) -> None:
        self.parameter, self.message, self.also = parameter, message, also
        self.flag = flag or globals()["flag"](parameter)  # when it is not the spelling
        super().__init__(f"{parameter} {self._fill(cli=False)}")

    def _fill(self, cli: bool) -> str:
        text = self.message
        for name in self.also:
            text = text.replace(f"{{{name}}}", flag(name) if cli else name)
        return text

    def for_cli(self) -> str:
        return f"{self.flag} {self._fill(cli=True)}"


def first_line(exc: BaseException) -> str:
    """An exception from another library as one line for an EdgecnnError: its first line,
    without terminal escape codes (torch colours some), at most 200 characters; for
    torch's weights-only refusal, the object it refused ("holds a non-tensor object
    posix.system"), not its advice to load the file unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    refused = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.<>]+)", text)
    if refused:
        return f"holds a non-tensor object {refused.group(1)}; only tensors are read"
    return text.splitlines()[0][:200] if text else type(exc).__name__
