"""The venvs inside the emulated Pi root: the base edgecnn package plus one TFLite runtime each.

Each venv sees Debian's python3-numpy (1.24, `--system-site-packages`), as a
Pi user's venv does; `numpy<2` (and `ml_dtypes<0.5` for LiteRT) keep pip from
replacing it. A venv is built once per requirement set; on later runs only the
edgecnn wheel is swapped in, offline, when the working tree changed.

The wheel is built on the host: edgecnn is pure Python, and building it under
emulation would only be slower.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from devtools.pi_root import RootError, root_command, run_logged

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


def build_wheel(src: Path) -> Path:
    """The wheel of the checkout at `src`: `bench --remote`'s builder (one wheel builder for
    the device paths; cached by content in ~/.cache/edgecnn-remote/build)."""
    from edgecnn.errors import EdgecnnError
    from edgecnn.runtime.remote_wheels import edgecnn_wheel

    try:
        wheel = edgecnn_wheel(src)
    except EdgecnnError as exc:
        raise RootError(str(exc)) from exc
    if wheel.local is None:
        raise RootError(f"{src} is not an edgecnn checkout (no pyproject.toml + edgecnn/)")
    return wheel.local


def wheel_digest(wheel: Path) -> str:
    """A hash of the wheel's files (not of the zip: its timestamps change on every build)."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            h.update(name.encode() + b"\0" + zf.read(name))
    return h.hexdigest()[:16]


def _ensure(venv: Path, requirements: tuple[str, ...], wheel: Path, wheel_arg: str,
            create: list[str], python: str, wrap: Callable[[list[str]], list[str]], log: Path,
            where: str) -> dict:
    """Create venv `venv` (seen from this host) with `requirements` and the edgecnn wheel, or
    swap in a changed wheel only, or reuse it; a marker file records what is installed.
    `create`, `python` and `wheel_arg` are as the venv's own system sees them; `wrap` turns
    a command into one that runs there (identity on this host, chroot+qemu for the root)."""
    marker = venv / MARKER
    try:
        state = json.loads(marker.read_text())
    except (OSError, ValueError):
        state = {}
    pip = [python, "-m", "pip", "install", "--no-input", "-q"]
    if state.get("requirements") != list(requirements):
        shutil.rmtree(venv, ignore_errors=True)
        _, created = run_logged(wrap(create), log, f"create venv {where}")
        _, installed = run_logged(wrap([*pip, *requirements, wheel_arg]), log,
                                  f"pip install {' '.join(requirements)} edgecnn into {where}")
        action, seconds = "built", created + installed
    elif state.get("wheel") != wheel_digest(wheel):
        _, seconds = run_logged(wrap([*pip, "--no-deps", "--force-reinstall", wheel_arg]), log,
                                f"reinstall edgecnn into {where}")
        # and any dependency the wheel gained since the venv was built (pillow did)
        _, more = run_logged(wrap([*pip, wheel_arg]), log, f"edgecnn's dependencies in {where}")
        seconds += more
        action = "refreshed edgecnn"
    else:
        action, seconds = "reused", 0.0
    marker.write_text(json.dumps({"requirements": list(requirements),
                                  "wheel": wheel_digest(wheel)}))
    return {"requirements": list(requirements), "action": action, "seconds": round(seconds, 1)}


def ensure_venv(root: Path, name: str, wheel: Path, log: Path) -> dict:
    """Venv `name` inside the emulated root (the wheel staged in WHEEL_DIR); what was done."""
    venv = f"{VENV_HOME}/{name}"
    info = _ensure(root / venv.lstrip("/"), VENVS[name], wheel, f"{WHEEL_DIR}/{wheel.name}",
                   ["python3", "-m", "venv", "--system-site-packages", venv],
                   f"{venv}/bin/python", lambda cmd: root_command(root, cmd), log,
                   f"{name} (emulated)")
    return {"venv": venv, **info}


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
    python = venv / "bin" / "python"
    requirements = tuple(r for r in VENVS[name] if not r.startswith("numpy")) + (X86_NUMPY,)
    info = _ensure(venv, requirements, wheel, str(wheel),
                   [host_base_python(), "-m", "venv", str(venv)], str(python),
                   lambda cmd: cmd, log, f"x86 {name}")
    return python, {"venv": str(venv), **info}
