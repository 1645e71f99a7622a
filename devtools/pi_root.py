"""An emulated Raspberry Pi OS (bookworm, arm64) root: probe the host, build, cache, run in it.

Raspberry Pi OS bookworm 64-bit is Debian bookworm arm64 (Python 3.11, numpy
1.24), so a debootstrapped Debian root run under qemu user-mode emulation has
the Pi's software stack. The root is built once (`debootstrap --variant=minbase
--foreign`, then the second stage inside the root, through binfmt_misc) and
reused while its marker file matches `ROOT_KEY`.

Commands run in the root in a private mount namespace (`unshare --mount`), so
the /proc, /sys and /dev mounts they need vanish with the process and never
leak into the host. Over /proc/cpuinfo goes an ARM-looking file (a Raspberry Pi
4's Cortex-A72): onnxruntime's and LiteRT's CPU feature detection read it and
crash on the host's x86 description.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
PACKAGES = ("python3", "python3-numpy", "python3-venv", "python3-pip", "ca-certificates")
MIRROR = os.environ.get("EDGECNN_PI_MIRROR", "http://deb.debian.org/debian")
ROOT_KEY = {"suite": SUITE, "arch": "arm64", "variant": "minbase", "packages": list(PACKAGES)}
MARKER = ".edgecnn-pi-root.json"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
#: What a process in the root sees as its environment (nothing leaks from the host's).
#: QEMU_CPU: emulate a Raspberry Pi 4's Cortex-A72 (ARMv8.0), not qemu's default "max"
#: CPU whose SVE/SME/i8mm features make runtimes pick kernels no Pi has (LiteRT 2.3's
#: int8 results are wrong there: 10% top-1).
BASE_ENV = {"QEMU_CPU": os.environ.get("EDGECNN_PI_CPU", "cortex-a72"),
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180",
            "PYTHONDONTWRITEBYTECODE": "1"}


class RootError(RuntimeError):
    """Building or entering the root failed although the host can emulate."""


def default_root() -> Path:
    """`$EDGECNN_PI_ROOT`, else ~/.cache/edgecnn-pi/bookworm-arm64."""
    return Path(os.environ.get("EDGECNN_PI_ROOT")
                or "~/.cache/edgecnn-pi/bookworm-arm64").expanduser()


def _quiet(cmd: Sequence[str]) -> bool:
    try:
        return subprocess.run(list(cmd), capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _aarch64_binfmt() -> Path | None:
    """The binfmt_misc entry that runs aarch64 ELF files, when one is registered."""
    for entry in sorted(BINFMT.glob("*")) if BINFMT.is_dir() else []:
        try:
            text = entry.read_text()
        except OSError:
            continue
        if "magic 7f454c460201010000000000000000000200b700" in text:
            return entry
    return None


def emulation_problem() -> str | None:
    """Why this host cannot run an arm64 root at all (None when it can).

    Mounts binfmt_misc and enables qemu-aarch64 when they are merely off, as a
    fresh CI host needs; what cannot be fixed from here is reported.
    """
    native = platform.machine() in ("aarch64", "arm64")
    if os.geteuid() != 0:
        return "not root: chroot, mount and debootstrap need root"
    missing = [tool for tool in ("debootstrap", "chroot", "unshare", "mount")
               if not shutil.which(tool)]
    if not native and not shutil.which("qemu-aarch64-static"):
        missing.append("qemu-aarch64-static")
    if missing:
        return (f"missing {', '.join(missing)} (apt-get install debootstrap qemu-user-static "
                "binfmt-support)")
    if not _quiet(["unshare", "--mount", "--propagation", "private", "true"]):
        return "no permission to create a mount namespace (unshare --mount failed)"
    if native:
        return None
    if not (BINFMT / "status").exists():
        _quiet(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        if not (BINFMT / "status").exists():
            return f"no binfmt_misc (cannot mount {BINFMT})"
    if _aarch64_binfmt() is None and shutil.which("update-binfmts"):
        _quiet(["update-binfmts", "--enable", "qemu-aarch64"])
    entry = _aarch64_binfmt()
    if entry is None:
        return "binfmt_misc has no qemu-aarch64 entry (update-binfmts --enable qemu-aarch64)"
    if not entry.read_text().startswith("enabled"):
        return f"binfmt_misc entry {entry.name} is disabled"
    return None


def fake_cpuinfo(cores: int) -> str:
    """/proc/cpuinfo as on a Raspberry Pi 4 (Cortex-A72), one block per host core.

    As many processors as the host has, so that it agrees with /sys (the
    runtimes' CPU detection reads both).
    """
    block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
             "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
             "CPU part\t: 0xd08\nCPU revision\t: 3\n\n")
    return ("".join(block.format(i=i) for i in range(max(1, cores)))
            + "Revision\t: c03114\n"
            + "Model\t\t: Raspberry Pi 4 Model B Rev 1.4 (qemu-aarch64 emulation)\n")


_ENTER = r"""
set -e
R="$1"; C="$2"; shift 2
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys" 2>/dev/null || true
mount --rbind /dev "$R/dev"
if [ -n "$C" ]; then mount --bind "$C" "$R/proc/cpuinfo"; fi
exec chroot "$R" "$@"
"""


def root_command(root: Path, argv: Sequence[str], *, cwd: str = "/",
                 env: dict[str, str] | None = None, cpuinfo: Path | None = None) -> list[str]:
    """The host command that runs `argv` in `root` (clean environment, own mounts)."""
    variables = [f"{k}={v}" for k, v in {**BASE_ENV, **(env or {})}.items()]
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _ENTER,
            "sh", str(root), str(cpuinfo or ""), "/usr/bin/env", "-i", *variables,
            "/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on `path` (created): one build or run at a time per root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def run_logged(cmd: Sequence[str], log: Path, what: str, *, timeout: float = 3600,
               check: bool = True) -> tuple[int, float]:
    """Run `cmd`, appending its output to `log`; (exit code, seconds).

    With `check`, a non-zero exit raises RootError naming `what` and the log's tail.
    """
    start = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n$ {what}\n")
        out.flush()
        try:
            code = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    seconds = time.monotonic() - start
    if check and code != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        raise RootError(f"{what} failed (exit {code}, see {log}): {tail}")
    return code, seconds


def _binfmt_field(entry: Path, name: str) -> str:
    """A field ("interpreter", "flags") of a binfmt_misc entry ("" when absent)."""
    for line in entry.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == f"{name}:" or key == name:
            return value.strip()
    return ""


def _copy_interpreter(root: Path) -> None:
    """Put qemu where the kernel looks for it, unless binfmt's F flag preloaded it."""
    entry = _aarch64_binfmt()
    if entry is None or "F" in _binfmt_field(entry, "flags"):
        return
    target = _binfmt_field(entry, "interpreter")
    dest = root / target.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(target), dest)


def root_ready(root: Path) -> bool:
    """Whether `root` holds a finished build of the current `ROOT_KEY`."""
    try:
        return json.loads((root / MARKER).read_text())["key"] == ROOT_KEY
    except (OSError, ValueError, KeyError):
        return False


def build_root(root: Path, log: Path) -> dict[str, float]:
    """debootstrap a fresh root into `root` (replacing any partial one); seconds per stage."""
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    _, first = run_logged(["debootstrap", "--arch=arm64", "--variant=minbase", "--foreign",
                           f"--include={','.join(PACKAGES)}", SUITE, str(partial), MIRROR],
                          log, "debootstrap (first stage, host)")
    _copy_interpreter(partial)
    _, second = run_logged(root_command(partial, ["/debootstrap/debootstrap", "--second-stage"]),
                           log, "debootstrap --second-stage (emulated)")
    partial.rename(root)
    (root / MARKER).write_text(json.dumps({"key": ROOT_KEY, "built": time.time(),
                                           "seconds": first + second}))
    return {"debootstrap_first_stage": first, "debootstrap_second_stage": second}


def refresh_host_files(root: Path, log: Path) -> None:
    """DNS and the host's extra CA certificates (pip must trust what the host trusts)."""
    _copy_interpreter(root)
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copy(resolv.resolve(), root / "etc/resolv.conf")
    target = root / HOST_CA_DIR.relative_to("/")
    target.mkdir(parents=True, exist_ok=True)
    certs = sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []
    for cert in certs:
        dest = target / cert.relative_to(HOST_CA_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, dest)
    # Stamped only after update-ca-certificates succeeded, so a failed run retries it.
    stamp = root / "etc/ssl/.edgecnn-host-ca"
    digest = hashlib.sha256(b"".join(c.read_bytes() for c in certs)).hexdigest()
    if certs and (not stamp.exists() or stamp.read_text() != digest):
        run_logged(root_command(root, ["update-ca-certificates"]), log,
                   "update-ca-certificates (emulated)")
        stamp.write_text(digest)
