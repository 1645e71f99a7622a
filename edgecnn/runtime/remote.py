"""`edgecnn bench --remote`: the same benchmark on a device over SSH, set up in one step.

Transport: the system's OpenSSH client, run as a subprocess, not a Python SSH
library (paramiko, asyncssh, fabric). The system client already honours
~/.ssh/config (host aliases, User, Port, IdentityFile, ProxyJump), the user's
agent and known_hosts, exactly as `ssh pi` does on the command line, and it
adds no dependency to the torch-free base install that a Raspberry Pi gets.
Files travel as a tar stream through the same `ssh` (Python's tarfile here,
`tar -x` on the device) rather than with scp, so one command carries
everything and can be replaced as a whole (`ssh_command`, e.g. a wrapper that
enters an emulated root). Every call runs with BatchMode=yes (never a password
prompt), a connect timeout and keep-alives.

On the device, under `base` (default ~/.cache/edgecnn-remote):

    <edgecnn version>/            venv: edgecnn (a wheel of this checkout) + runtimes
    <edgecnn version>/edgecnn-remote.json   what the venv holds
    wheels/                        the wheels copied over
    artifacts/<sha256>/NAME        artifacts (+ a NAME.json sidecar), copied when absent

Steps per device: probe (Python >= 3.10, platform, free space, what is there)
-> upload (wheels, artifacts; skipped when the same sha256 is there) -> venv
(created once, edgecnn swapped when the wheel changed) -> `edgecnn bench --json`
(or `edgecnn validate --json`) there -> the JSON back. Errors a user can meet
(host unreachable, authentication failed, no Python 3.10+, no wheel for the
device's platform, disk full) are one `EdgecnnError` line naming the target.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from edgecnn import __version__
from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.runtime import remote_wheels
from edgecnn.runtime.validate import ValidationReport

DEFAULT_BASE = "~/.cache/edgecnn-remote"
MARKER = "edgecnn-remote.json"
#: The runtime each artifact suffix needs besides the base package (onnxruntime is in it).
RUNTIMES: dict[str, tuple[str, ...]] = {".onnx": (), ".tflite": ("ai-edge-litert",)}
#: Exit code of the probe when no Python 3.10+ is found.
_NO_PYTHON = 97
_UNREACHABLE = ("Could not resolve hostname", "Connection refused", "timed out",
                "No route to host", "Network is unreachable", "Connection closed",
                "Connection reset", "kex_exchange_identification")
_AUTH = ("Permission denied", "Too many authentication failures", "no mutual signature")


@dataclass(frozen=True)
class Target:
    """An SSH destination: `USER@HOST[:PORT]`, `HOST`, or an ~/.ssh/config alias."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """"pi@raspberrypi.local:2222" -> Target("raspberrypi.local", "pi", 2222);
        `[::1]:22` for IPv6. Raises ParameterError("remote") on a malformed value."""
        match = re.fullmatch(r"(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s\[\]]+)(?::(\d+))?", text.strip())
        if not match:
            raise ParameterError("remote", f"expects USER@HOST[:PORT], got {text!r}")
        user, host, port = match.groups()
        if port is not None and not 0 < int(port) < 65536:
            raise ParameterError("remote", f"{text}: port must be 1-65535")
        return cls(host.strip("[]"), user, int(port) if port else None)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}{f':{self.port}' if self.port else ''}"


@dataclass
class Device:
    """One remote device: runs shell scripts there through `ssh_command`.

    `ssh_command` replaces `ssh` (e.g. ("ssh", "-F", "my_config")); the options,
    `-p PORT`, `[USER@]HOST` and the remote command are appended to it, as to ssh.
    """

    target: Target
    ssh_command: tuple[str, ...] = ("ssh",)
    base: str = DEFAULT_BASE
    connect_timeout: int = 10

    def argv(self, remote_command: str) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                   "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.target.port:
            options += ["-p", str(self.target.port)]
        user = f"{self.target.user}@" if self.target.user else ""
        return [*self.ssh_command, *options, f"{user}{self.target.host}", remote_command]

    def run(self, script: str, *args: str, what: str, stdin: bytes | None = None,
            ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        """Run the POSIX sh `script` with `args` on the device ($B is the base dir).

        Raises EdgecnnError (one line, naming the target) when ssh or the script fails.
        """
        prelude = ('case "$1" in "~/"*) B="$HOME/${1#"~/"}";; *) B="$1";; esac; shift; ')
        command = " ".join(shlex.quote(a) for a in
                           ("sh", "-c", prelude + script, "sh", self.base, *args))
        try:
            proc = subprocess.run(self.argv(command), input=stdin or b"", capture_output=True)
        except FileNotFoundError:
            raise ParameterError("ssh_command", f"{self.ssh_command[0]!r}: not found") from None
        if proc.returncode not in ok_codes:
            raise EdgecnnError(self.explain(proc, what))
        return proc

    def explain(self, proc: subprocess.CompletedProcess, what: str) -> str:
        """The one-line error for a failed call: the cause a user can act on."""
        err = proc.stderr.decode(errors="replace")
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()
                 and not ln.startswith(("Warning: Permanently added", "INFO:"))]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        t = self.target
        if "No space left on device" in err:
            return f"{t}: disk full on the device ({what}): {last}"
        if proc.returncode == 255:
            if "Host key verification failed" in err:
                return (f"{t}: host key verification failed (the host is not in known_hosts "
                        f"or its key changed; connect once with ssh {t.host} to accept it)")
            if any(s in err for s in _AUTH):
                return (f"{t}: authentication failed (BatchMode: a key in ssh-agent or "
                        f"~/.ssh/config is needed, passwords are not asked): {last}")
            if any(s in err for s in _UNREACHABLE):
                return f"{t}: host unreachable: {last}"
        if proc.returncode == _NO_PYTHON:
            return f"{t}: no Python 3.10+ on the device ({last})"
        if re.search(r"No matching distribution|not a supported wheel|from versions: none", err):
            return f"{t}: no wheel for the device's platform ({what}): {last}"
        return f"{t}: {what} failed (exit {proc.returncode}): {last}"


_PROBE_PY = r"""
import json, os, platform, sys, importlib.util
base = sys.argv[1]
def listing(d):
    out = []
    for root, _, files in os.walk(d):
        out += [os.path.relpath(os.path.join(root, f), d) for f in files]
    return sorted(out)
venv = os.path.join(base, sys.argv[2])
try:
    with open(os.path.join(venv, sys.argv[3])) as f:
        state = json.load(f)
except (OSError, ValueError):
    state = None
if not os.path.exists(os.path.join(venv, "bin", "python")):
    state = None
probe = base
while not os.path.isdir(probe):
    probe = os.path.dirname(probe) or "/"
st = os.statvfs(probe)
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
    "machine": platform.machine(), "libc": list(platform.libc_ver()), "base": base,
    "free_bytes": st.f_bavail * st.f_frsize, "venv_state": state,
    "has_venv": all(importlib.util.find_spec(m) for m in ("venv", "ensurepip")),
    "artifacts": listing(os.path.join(base, "artifacts")),
    "wheels": listing(os.path.join(base, "wheels"))}))
"""

_FIND_PYTHON = ("for p in python3.13 python3.12 python3.11 python3.10 python3; do "
                "if command -v $p >/dev/null 2>&1 && $p -c 'import sys; "
                "sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then exec $p -c \"$0\" "
                "\"$B\" \"$@\"; fi; done; "
                "echo \"found $(python3 -V 2>&1 || echo 'no python3')\" >&2; exit 97")


def probe(device: Device) -> dict:
    """What the device has: Python, platform, free space, venv state, uploaded files."""
    script = _FIND_PYTHON.replace('"$0"', shlex.quote(_PROBE_PY))
    proc = device.run(script, __version__, MARKER, what="probe")
    try:
        return json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EdgecnnError(f"{device.target}: the probe printed no JSON "
                           f"({proc.stdout[-200:]!r})") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Upload:
    """A local file and where it goes under the device's base directory."""

    local: Path
    remote: str  # relative to base: "artifacts/<sha256>/NAME" or "wheels/NAME"

    @classmethod
    def artifact(cls, path: Path) -> list[Upload]:
        """The artifact (and its .json sidecar) under a directory named after their hash."""
        files = [path] + ([Path(f"{path}.json")] if Path(f"{path}.json").is_file() else [])
        key = hashlib.sha256("".join(sha256(f) for f in files).encode()).hexdigest()
        return [cls(f, f"artifacts/{key}/{f.name}") for f in files]


def upload(device: Device, uploads: list[Upload], info: dict) -> dict:
    """Send the files the device lacks in one tar stream; skipped and sent counts, bytes."""
    present = {f"artifacts/{p}" for p in info["artifacts"]} | {f"wheels/{p}"
                                                                for p in info["wheels"]}
    missing = [u for u in uploads if u.remote not in present]
    size = sum(u.local.stat().st_size for u in missing)
    if size and size * 1.2 + 50e6 > info["free_bytes"]:
        raise EdgecnnError(f"{device.target}: disk full: {info['free_bytes'] / 1e6:.0f} MB free "
                           f"in {info['base']}, {size / 1e6:.0f} MB to copy")
    if missing:
        stream = io.BytesIO()
        with tarfile.open(fileobj=stream, mode="w") as tar:
            for u in missing:
                tar.add(u.local, arcname=u.remote, recursive=False)
        # extract beside the destination, then move whole files/directories into place
        device.run('mkdir -p "$B/artifacts" "$B/wheels" && T=$(mktemp -d "$B/.in.XXXXXX") && '
                   'tar -x -C "$T" -f - && '
                   'for d in "$T"/artifacts/*; do [ -e "$d" ] || continue; '
                   'rm -rf "$B/artifacts/${d##*/}"; mv "$d" "$B/artifacts/"; done && '
                   'for f in "$T"/wheels/*; do [ -e "$f" ] || continue; '
                   'rm -rf "$B/wheels/${f##*/}"; mv "$f" "$B/wheels/"; done; '
                   'rm -rf "$T"', what="copy files", stdin=stream.getvalue())
    return {"sent": len(missing), "skipped": len(uploads) - len(missing), "bytes": size}


def requirements_for(paths: list[Path]) -> tuple[str, ...]:
    """The runtimes the artifacts need (sorted, unique); an unknown suffix is an error."""
    needed: set[str] = set()
    for p in paths:
        if p.suffix not in RUNTIMES:
            raise EdgecnnError(f"{p}: --remote runs .onnx and .tflite files, not {p.suffix!r}")
        needed.update(RUNTIMES[p.suffix])
    return tuple(sorted(needed))


def wheel_path(wheel: remote_wheels.Wheel) -> str:
    """Where edgecnn's wheel goes under base: one directory per content (same file name)."""
    return f"wheels/edgecnn-{wheel.digest}/{wheel.name}"


def ensure_venv(device: Device, info: dict, wheel: remote_wheels.Wheel,
                requirements: tuple[str, ...], offline: bool) -> str:
    """Create or refresh the venv; returns what was done ("reused", "installed", ...)."""
    state = info["venv_state"] or {}
    have = set(state.get("requirements", []))
    pip = '"$V/bin/python" -m pip install --no-input -q --disable-pip-version-check'
    if offline:
        pip += ' --no-index --find-links "$B/wheels"'
    steps, action = [], "reused"
    if not info["venv_state"]:
        if not info["has_venv"]:
            raise EdgecnnError(f"{device.target}: Python {info['python']} there has no venv "
                               "module (install python3-venv)")
        steps.append(f'rm -rf "$V" && {shlex.quote(info["executable"])} -m venv "$V"')
        action = "created"
    if not set(requirements) <= have or not info["venv_state"]:
        steps.append(f'{pip} "$B/{wheel_path(wheel)}" {" ".join(map(shlex.quote, requirements))}'
                     if wheel.local else f"{pip} {wheel.name} {' '.join(requirements)}")
        action = action if action == "created" else "installed runtimes"
    elif state.get("wheel") != wheel.digest:
        # the new wheel replaces the old in place; the second install adds any dependency
        # it gained since the venv was built (pillow did), leaving the others as they are
        target = f'"$B/{wheel_path(wheel)}"' if wheel.local else wheel.name
        steps.append(f"{pip} --no-deps --force-reinstall {target} && {pip} {target}")
        action = "refreshed edgecnn"
    if steps:
        marker = json.dumps({"requirements": sorted(have | set(requirements)),
                             "wheel": wheel.digest, "edgecnn": __version__})
        device.run(f'V="$B/{__version__}"; ' + " && ".join(steps)
                   + f' && printf %s {shlex.quote(marker)} > "$V/{MARKER}"',
                   what=f"install edgecnn{' ' if requirements else ''}{' '.join(requirements)}")
    return action


def run_edgecnn(device: Device, args: list[str], what: str,
                ok_codes: tuple[int, ...] = (0,)) -> tuple[dict, int]:
    """`edgecnn ARGS --json R` in the device's artifact directory; (its JSON, exit code)."""
    quoted = " ".join(shlex.quote(a) for a in args)
    script = (f'cd "$B/artifacts" && R=$(mktemp "$B/.run.XXXXXX") && '
              f'"$B/{__version__}/bin/edgecnn" {quoted} --json "$R" >&2; c=$?; '
              f'[ -s "$R" ] && cat "$R"; rm -f "$R"; exit $c')
    proc = device.run(script, what=what, ok_codes=ok_codes)
    try:
        return json.loads(proc.stdout), proc.returncode
    except ValueError:
        raise EdgecnnError(f"{device.target}: {what} printed no JSON") from None


def prepare(device: Device, paths: list[Path], offline: bool, extra: list[Path] = ()
            ) -> tuple[dict, dict[Path, str]]:
    """Probe, upload, install; (setup record, local path -> path under base/artifacts)."""
    info = probe(device)
    requirements = requirements_for(paths)
    wheel = remote_wheels.edgecnn_wheel()
    uploads: list[Upload] = []
    where: dict[Path, str] = {}
    for path in [*paths, *extra]:
        files = Upload.artifact(path)
        uploads += files
        where[path] = files[0].remote.removeprefix("artifacts/")
    needs_install = (not info["venv_state"]
                     or not set(requirements) <= set(info["venv_state"].get("requirements", []))
                     or info["venv_state"].get("wheel") != wheel.digest)
    if needs_install and wheel.local:
        uploads.append(Upload(wheel.local, wheel_path(wheel)))
    if needs_install and offline:
        for w in remote_wheels.download_for(info, [wheel.requirement, *requirements],
                                            str(device.target)):
            if not w.name.startswith("edgecnn-"):
                uploads.append(Upload(w, f"wheels/{w.name}"))
    copied = upload(device, uploads, info)
    action = ensure_venv(device, info, wheel, requirements, offline)
    setup = {"target": str(device.target), "base": info["base"],
             "venv": f"{info['base']}/{__version__}", "venv_action": action,
             "offline": offline, "python": info["python"], "copied": copied,
             "requirements": list(requirements)}
    return setup, where


def _localize(report: dict, where: dict[Path, str]) -> None:
    """Rows name the local files again; the sha256 key of each is kept."""
    by_remote = {remote: path for path, remote in where.items()}
    for row in [*report.get("results", []), *report.get("profiles", [])]:
        local = by_remote.get(row.get("artifact"))
        if local is not None:
            row["remote_artifact"], row["artifact"] = row["artifact"], str(local)
            row["sha256"] = sha256(local)


def remote_bench(device: Device, paths: list[Path], bench_args: list[str],
                 offline: bool = False) -> dict:
    """The bench report of `paths` run on `device` (flags `bench_args`), with "device":
    `BenchReport.to_dict()`'s form (`BenchReport.from_dict` reads it), or the profile
    report with --profile."""
    setup, where = prepare(device, paths, offline)
    report, _ = run_edgecnn(device, ["bench", *(where[p] for p in paths), *bench_args],
                            what="edgecnn bench")
    _localize(report, where)
    report["device"] = setup
    return report


def remote_validate(device: Device, reference: Path, candidates: list[Path], data: Path,
                    validate_args: list[str], offline: bool = False,
                    ) -> tuple[ValidationReport, int]:
    """`edgecnn validate` of the files on `device` on the npz `data`; (report, exit code)."""
    setup, where = prepare(device, [reference, *candidates], offline, extra=[data])
    args = ["validate", "--reference", where[reference], "--data", f"npz:{where[data]}"]
    for c in candidates:
        args += ["--candidate", where[c]]
    report, code = run_edgecnn(device, [*args, *validate_args], what="edgecnn validate",
                               ok_codes=(0, 1))
    report["device"] = setup
    return ValidationReport.from_dict(report), code
