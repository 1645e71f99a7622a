"""Small helpers shared across modules: atomic writes, stale temp files, writable outputs,
name lists in messages."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from edgecnn.errors import EdgecnnError, ParameterError

#: Our temporary files: `.NAME.PID.RANDOM.tmp` beside the target (the PID of the writer).
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
#: The older naming, `.NAME.XXXXXXXX.tmp` (tempfile.mkstemp), cleaned once it is an hour old.
_OLD_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
_OLD_TEMP_AGE_S = 3600


#: names a message lists before saying how many more there are
SHOWN = 20


def listing(names: list[str], shown: int = SHOWN) -> str:
    """Names for a one-line message: the first `shown`, comma-separated, then how many more
    (`a, b, c ... 4 more`)."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" ... {more} more" if more > 0 else "")


def traced_frame(stack_trace: str) -> tuple[str, int, str] | None:
    """(file name, line, code) of the innermost frame of a traceback text (an fx node's
    `meta["stack_trace"]`: where the user's code made it), else None."""
    found = re.findall(r'File "([^"]+)", line (\d+).*\n\s*(.*)', stack_trace or "")
    return (Path(found[-1][0]).name, int(found[-1][1]), found[-1][2].strip()) if found else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def is_stale_temp(path: Path) -> bool:
    """Whether `path` is a temporary file of ours whose writer is gone (killed mid-write)."""
    match = _TEMP.match(path.name)
    if match:
        return not _alive(int(match.group("pid")))
    if _OLD_TEMP.match(path.name):
        try:
            return time.time() - path.stat().st_mtime > _OLD_TEMP_AGE_S
        except OSError:
            return False
    return False


def clean_stale_temps(directory: Path, *, recursive: bool = False) -> list[Path]:
    """Remove our temporary files left by a killed writer in `directory`; return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    candidates = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    removed = []
    for path in candidates:
        if path.is_file() and is_stale_temp(path):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success.

    A failure never leaves a half-written file behind, and an OSError (a full disk,
    a directory in the way, a read-only mount) becomes one `EdgecnnError` naming
    `path`. The file gets the mode the umask gives (0666 & ~umask), like any other
    tool's output. Temporary files of killed writers beside `path` are removed.
    """
    path = Path(path)
    if path.is_dir():
        raise EdgecnnError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path.parent)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
    except OSError as exc:
        raise EdgecnnError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as exc:
            raise EdgecnnError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def require_file(path: str | Path, what: str = "") -> Path:
    """`path` as a Path when it is a readable regular file; else EdgecnnError naming it:
    "PATH: file not found" or "PATH: is a directory, not a file" (`what` is appended,
    e.g. "(--reference)")."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory, not a file" if path.is_dir() else "file not found"
        raise EdgecnnError(f"{path}: {problem}{' ' + what if what else ''}")
    return path


def check_writable_dir(directory: Path, parameter: str) -> None:
    """Fail fast, before long work, when `directory` cannot be created or written. Creates
    nothing: a run that stops on a later check leaves no empty folder behind; the probe is
    written in the directory or, when it does not exist yet, in its nearest existing
    parent (where it would be created). Raises ParameterError naming `parameter`."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ParameterError(parameter, f"{directory}: exists and is not a directory")
    existing = directory.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ParameterError(parameter, f"{directory}: cannot write there ({existing} is not "
                                        "a directory)")
    try:
        probe = existing / f".edgecnn-probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ParameterError(parameter, f"{directory}: cannot write there "
                                        f"({exc.strerror or exc})") from None


def check_writable_file(path: Path, parameter: str) -> None:
    """Fail fast when the output file `path` is a directory or its folder is not writable.
    Raises ParameterError naming `parameter`."""
    path = Path(path)
    if path.is_dir():
        raise ParameterError(parameter, f"{path}: is a directory; give a file path")
    check_writable_dir(path.parent, parameter)
