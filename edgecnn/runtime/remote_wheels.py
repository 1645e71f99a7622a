"""The wheels `edgecnn bench --remote` puts on a device: edgecnn's own, and for `--offline` all.

edgecnn's wheel is built from this checkout (`pip wheel --no-deps` of a staged
copy of pyproject.toml, README.md and edgecnn/, so nothing is written into the
working tree) and cached by a hash of those files in
~/.cache/edgecnn-remote/build/. An installed edgecnn without its source tree
(a PyPI install) sends the requirement `edgecnn==<version>` instead.

`--offline`: the device may have no route to a package index, so the runtime
wheels are downloaded here for the device's platform tags (`pip download
--only-binary=:all: --platform ... --python-version ... --abi ...`) and copied
over. pip matches --platform literally, so every tag the device accepts is
passed: manylinux_2_Y for each glibc minor version down to 17 (PEP 600), the
legacy manylinux2014/2010/1 aliases, musllinux_1_Y (PEP 656) and linux_ARCH.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgecnn import __version__
from edgecnn.errors import EdgecnnError

SRC = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """`$EDGECNN_REMOTE_CACHE`, else ~/.cache/edgecnn-remote (on this workstation)."""
    return Path(os.environ.get("EDGECNN_REMOTE_CACHE") or "~/.cache/edgecnn-remote").expanduser()


@dataclass(frozen=True)
class Wheel:
    """edgecnn as the device installs it: a local wheel file, or a requirement for the index."""

    name: str  # file name, or "edgecnn==X.Y.Z"
    digest: str  # changes when the package's files change
    local: Path | None = None

    @property
    def requirement(self) -> str:
        return str(self.local) if self.local else self.name


def _source_files(src: Path) -> list[Path]:
    files = [src / "pyproject.toml", src / "README.md"]
    files += sorted(p for p in (src / "edgecnn").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    return [f for f in files if f.exists()]


def edgecnn_wheel(src: Path = SRC) -> Wheel:
    """A wheel of the checkout at `src` (built once per content), or the index requirement."""
    if not (src / "pyproject.toml").is_file() or not (src / "edgecnn").is_dir():
        return Wheel(f"edgecnn=={__version__}", f"pypi-{__version__}")
    h = hashlib.sha256()
    for f in _source_files(src):
        h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes())
    digest = h.hexdigest()[:16]
    out = cache_dir() / "build" / digest
    built = sorted(out.glob("edgecnn-*.whl"))
    if built:
        return Wheel(built[-1].name, digest, built[-1])
    with tempfile.TemporaryDirectory(prefix="edgecnn-wheel-") as tmp:
        stage = Path(tmp) / "src"
        for f in _source_files(src):
            target = stage / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
        dist = Path(tmp) / "dist"
        base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist)]
        proc = subprocess.run([*base, "--no-build-isolation", str(stage)], capture_output=True,
                              text=True)
        if proc.returncode != 0:  # no setuptools here: let pip fetch the build backend
            proc = subprocess.run([*base, str(stage)], capture_output=True, text=True)
        wheels = sorted(dist.glob("edgecnn-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise EdgecnnError(f"{src}: cannot build the edgecnn wheel: {tail[0]}")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheels[-1], out / wheels[-1].name)
    return Wheel(wheels[-1].name, digest, out / wheels[-1].name)


def platform_tags(machine: str, libc: list[str]) -> list[str]:
    """Every wheel platform tag a Linux device with this CPU and C library accepts.

    ("aarch64", ["glibc", "2.36"]) -> manylinux_2_36_aarch64 ... manylinux_2_17_aarch64,
    manylinux2014_aarch64, linux_aarch64 (PEP 600; PEP 599's aliases for 2_17/2_12/2_5).
    """
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(machine.lower(), machine.lower())
    name, version = (libc + ["", ""])[:2]
    tags = []
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if name == "glibc" and major == 2:
        tags += [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
        aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{alias}_{arch}" for m, alias in aliases.items() if m <= minor]
    elif not name:  # musl: platform.libc_ver() is empty; offer the musllinux tags
        tags += [f"musllinux_1_{m}_{arch}" for m in range(2, -1, -1)]
    return [*tags, f"linux_{arch}"]


def download_for(info: dict, requirements: list[str], target: str) -> list[Path]:
    """The wheels of `requirements` and their dependencies for the probed device `info`."""
    py = "".join(info["python"].split(".")[:2])
    tags = platform_tags(info["machine"], info["libc"])
    out = cache_dir() / "downloads" / f"cp{py}-{tags[0]}"
    out.mkdir(parents=True, exist_ok=True)
    # every build of the checkout is named edgecnn-<version>-py3-none-any.whl, and pip
    # download reuses a file of that name already in `out` (with its old dependencies)
    for stale in out.glob("edgecnn-*.whl"):
        stale.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", py, "--implementation", "cp",
           "--abi", f"cp{py}", "--abi", "abi3", "--abi", "none", "-d", str(out)]
    for tag in tags:
        cmd += ["--platform", tag]
    proc = subprocess.run([*cmd, *requirements], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("ERROR")]
        last = (lines or proc.stderr.strip().splitlines() or ["pip download failed"])[-1]
        if "No matching distribution" in proc.stderr or "from versions: none" in proc.stderr:
            raise EdgecnnError(f"{target}: no wheel for the device's platform ({tags[0]}, "
                               f"Python {info['python']}): {last}")
        raise EdgecnnError(f"{target}: --offline: pip download failed: {last}")
    return sorted(out.glob("*.whl"))
