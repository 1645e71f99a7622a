"""The venvs inside the emulated Pi root: the base edgecnn package plus one TFLite runtime each.

Each venv sees Debian's python3-numpy (1.24, `--system-site-packages`), as a
Pi user's venv does; `numpy<2` (and `ml_dtypes<0.5` for LiteRT) keep pip from
replacing it. A venv is built once per requirement set; on later runs only the
edgecnn wheel is swapped in, offline, when the working tree changed.

The wheel is built on the host: edgecnn is pure Python, and building it under
emulation would only be slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from edgecnn.tools.pi_root import RootError, root_command, run_logged

#: Inside the root.
VENV_HOME = "/opt/edgecnn/venvs"
WHEEL_DIR = "/opt/edgecnn/wheels"

#: venv name (= the backend it exercises) -> what pip installs besides edgecnn.
VENVS: dict[str, tuple[str, ...]] = {
    "tflite_runtime": ("numpy<2", "tflite-runtime==2.14.0"),
    "ai_edge_litert": ("numpy<2", "ml_dtypes<0.5", "ai-edge-litert"),
    "onnxruntime": ("numpy<2",),
}

#: The artifacts each venv is there to run.
SUFFIXES: dict[str, str] = {"tflite_runtime": ".tflite", "ai_edge_litert": ".tflite",
                            "onnxruntime": ".onnx"}

MARKER = ".edgecnn-venv.json"


@contextlib.contextmanager
def staged_source(src: Path) -> Iterator[Path]:
    """A temporary copy of what the wheel needs (pyproject.toml, README.md, edgecnn/),
    so pip's in-tree build never writes build/ or egg-info into the working tree."""
    with tempfile.TemporaryDirectory(prefix="edgecnn-src-") as tmp:
        stage = Path(tmp) / "edgecnn-src"
        stage.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (src / name).exists():
                shutil.copy2(src / name, stage / name)
        shutil.copytree(src / "edgecnn", stage / "edgecnn",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield stage


def build_wheel(src: Path, out_dir: Path, log: Path) -> Path:
    """A wheel of the working tree's edgecnn (no extras matter: a wheel has none baked in).

    Built from a staged copy of pyproject.toml, README.md and edgecnn/, so pip
    never writes build/ or egg-info into the working tree.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("edgecnn-*.whl"):
        old.unlink()
    with staged_source(src) as stage:
        base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir)]
        code, _ = run_logged([*base, "--no-build-isolation", str(stage)], log,
                             "pip wheel edgecnn (host, no build isolation)", check=False)
        if code != 0:
            run_logged([*base, str(stage)], log, "pip wheel edgecnn (host)")
    wheels = sorted(out_dir.glob("edgecnn-*.whl"))
    if not wheels:
        raise RootError(f"no edgecnn wheel was built in {out_dir} (see {log})")
    return wheels[-1]


def _digest(wheel: Path) -> str:
    """A hash of the wheel's files (not of the zip: its timestamps change on every build)."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            h.update(name.encode() + b"\0" + zf.read(name))
    return h.hexdigest()[:16]


def ensure_venv(root: Path, name: str, wheel: Path, log: Path) -> dict:
    """Create or refresh venv `name` in `root`; what was done and how long it took."""
    requirements = VENVS[name]
    venv = f"{VENV_HOME}/{name}"
    host_venv = root / venv.lstrip("/")
    marker = host_venv / MARKER
    wheel_in_root = f"{WHEEL_DIR}/{wheel.name}"
    try:
        state = json.loads(marker.read_text())
    except (OSError, ValueError):
        state = {}
    pip = [f"{venv}/bin/python", "-m", "pip", "install", "--no-input", "-q"]
    if state.get("requirements") != list(requirements):
        shutil.rmtree(host_venv, ignore_errors=True)
        _, create = run_logged(root_command(root, ["python3", "-m", "venv",
                                                   "--system-site-packages", venv]),
                               log, f"create venv {name} (emulated)")
        _, install = run_logged(root_command(root, [*pip, *requirements, wheel_in_root]),
                                log, f"pip install {' '.join(requirements)} edgecnn into "
                                f"{name} (emulated)")
        action, seconds = "built", create + install
    elif state.get("wheel") != _digest(wheel):
        _, seconds = run_logged(root_command(root, [*pip, "--no-deps", "--force-reinstall",
                                                    wheel_in_root]),
                                log, f"reinstall edgecnn into {name} (emulated)")
        action = "refreshed edgecnn"
    else:
        action, seconds = "reused", 0.0
    marker.write_text(json.dumps({"requirements": list(requirements),
                                  "wheel": _digest(wheel)}))
    return {"venv": venv, "requirements": list(requirements), "action": action,
            "seconds": round(seconds, 1)}


#: On x86, Debian's numpy is not there to keep: pin the version bookworm ships instead.
X86_NUMPY = "numpy>=1.24,<1.25"


def host_base_python() -> str:
    """The Pi's Python version on this host when there is one (3.11), else this interpreter."""
    for candidate in ("/usr/bin/python3.11", shutil.which("python3.11")):
        if candidate and Path(candidate).exists():
            return candidate
    return sys.executable


def ensure_x86_venv(base: Path, name: str, wheel: Path, log: Path) -> tuple[Path, dict]:
    """The x86 twin of venv `name`: same requirements (numpy as on bookworm), same wheel.

    Comparing aarch64 with x86 only means something for the same runtime
    version: tflite-runtime 2.14 and LiteRT 2.x, for one, round some int8
    results differently on either architecture.
    """
    venv = base / name
    requirements = tuple(r for r in VENVS[name] if not r.startswith("numpy")) + (X86_NUMPY,)
    marker = venv / MARKER
    try:
        state = json.loads(marker.read_text())
    except (OSError, ValueError):
        state = {}
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--no-input", "-q"]
    if state.get("requirements") != list(requirements):
        shutil.rmtree(venv, ignore_errors=True)
        _, create = run_logged([host_base_python(), "-m", "venv", str(venv)], log,
                               f"create x86 venv {name}")
        _, install = run_logged([*pip, *requirements, str(wheel)], log,
                                f"pip install {' '.join(requirements)} edgecnn into x86 {name}")
        action, seconds = "built", create + install
    elif state.get("wheel") != _digest(wheel):
        _, seconds = run_logged([*pip, "--no-deps", "--force-reinstall", str(wheel)], log,
                                f"reinstall edgecnn into x86 {name}")
        action = "refreshed edgecnn"
    else:
        action, seconds = "reused", 0.0
    marker.write_text(json.dumps({"requirements": list(requirements),
                                  "wheel": _digest(wheel)}))
    return python, {"venv": str(venv), "requirements": list(requirements), "action": action,
                    "seconds": round(seconds, 1)}
