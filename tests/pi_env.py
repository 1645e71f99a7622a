"""A cached virtual environment that mirrors a Raspberry Pi running Raspberry Pi OS bookworm.

Python 3.11, numpy 1.24, tflite-runtime 2.14 and the base edgecnn package
(no extras): no torch, no ai-edge-litert, no flatbuffers. Tests run the
`edgecnn` command there to prove the device side works with what a Pi has.

    from pi_env import pi_python_or_skip, run_pi
    python = pi_python_or_skip()           # builds once, then reuses
    run_pi(["-c", "import tflite_runtime"])

The environment lives in `$EDGECNN_TEST_CACHE` (default ~/.cache/edgecnn-tests),
named after a hash of pyproject.toml and the pinned requirements, so a
dependency change builds a new one. The edgecnn package itself is reinstalled
(offline, `--no-deps`) whenever its source changes. A file lock makes
concurrent test processes wait for one build instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edgecnn.runtime.remote_wheels import edgecnn_wheel

#: What a Pi on Raspberry Pi OS bookworm has (python3-numpy 1.24, tflite-runtime 2.14 wheel).
PI_REQUIREMENTS = ("numpy>=1.24,<1.25", "tflite-runtime==2.14.0")
PI_PYTHON = (3, 11)
ROOT = Path(__file__).resolve().parents[1]
_PIP = ("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q")


class PiEnvUnavailable(RuntimeError):
    """The environment cannot be built here (no Python 3.11, or no package index)."""


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECNN_TEST_CACHE", "~/.cache/edgecnn-tests")).expanduser()


def _hash(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def deps_key(root: Path = ROOT) -> str:
    """Changes when pyproject.toml or the pinned Pi requirements change."""
    return _hash([(root / "pyproject.toml").read_bytes(), *map(str.encode, PI_REQUIREMENTS)])


def source_key(root: Path = ROOT) -> str:
    """Changes when any file of the installed package changes."""
    files = sorted((root / "edgecnn").rglob("*.py"))
    return _hash([(root / "pyproject.toml").read_bytes(),
                    *(f"{p.relative_to(root)}\0".encode() + p.read_bytes() for p in files)])


def venv_dir(root: Path = ROOT) -> Path:
    return cache_dir() / f"pi-bookworm-py{PI_PYTHON[0]}{PI_PYTHON[1]}-{deps_key(root)}"


def _base_python() -> str:
    if sys.version_info[:2] == PI_PYTHON:
        return sys.executable
    found = shutil.which(f"python{PI_PYTHON[0]}.{PI_PYTHON[1]}")
    if not found:
        raise PiEnvUnavailable(f"no Python {PI_PYTHON[0]}.{PI_PYTHON[1]} interpreter to build "
                               "the Raspberry Pi OS bookworm environment")
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], what: str, unavailable: bool) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        error = PiEnvUnavailable if unavailable else RuntimeError
        raise error(f"cannot {what}: {tail}")


def _build(venv: Path, root: Path) -> None:
    """Create the venv and install everything from the package index (the network step)."""
    shutil.rmtree(venv, ignore_errors=True)
    _run([_base_python(), "-m", "venv", str(venv)], f"create a venv at {venv}", True)
    python = str(venv / "bin" / "python")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(PI_REQUIREMENTS) + "\n")
    try:
        _run([python, *_PIP, "-c", constraints.name, *PI_REQUIREMENTS,
              str(edgecnn_wheel(root).local)],
             "install numpy<2, tflite-runtime and edgecnn (no network?)", True)
    finally:
        os.unlink(constraints.name)


def _reinstall_package(venv: Path, root: Path) -> None:
    """Offline: put the current source of edgecnn into the venv, dependencies untouched."""
    _run([str(venv / "bin" / "python"), *_PIP, "--no-deps", "--force-reinstall",
          str(edgecnn_wheel(root).local)], "reinstall edgecnn into the Pi venv", False)


#: Why the environment could not be built, once tried in this process (not retried).
_unavailable: list[str] = []


def pi_venv(root: Path = ROOT) -> Path:
    """The Pi environment's python executable, built or refreshed as needed."""
    if _unavailable:
        raise PiEnvUnavailable(_unavailable[0])
    venv = venv_dir(root)
    with _locked(cache_dir() / ".pi-env.lock"):
        ready, stamp = venv / ".ready", venv / ".source-key"
        if not ready.exists():
            try:
                _build(venv, root)
            except PiEnvUnavailable as exc:
                shutil.rmtree(venv, ignore_errors=True)
                _unavailable.append(str(exc))
                raise
            ready.write_text(deps_key(root))
            stamp.write_text(source_key(root))
        elif not stamp.exists() or stamp.read_text() != source_key(root):
            _reinstall_package(venv, root)
            stamp.write_text(source_key(root))
    return venv / "bin" / "python"


def pi_python_or_skip() -> Path:
    """`pi_venv()` for tests: skip with the reason when the environment cannot be built."""
    import pytest

    try:
        return pi_venv()
    except PiEnvUnavailable as exc:
        pytest.skip(f"Raspberry Pi OS bookworm venv unavailable: {exc}")


def pi_env_vars() -> dict[str, str]:
    """The environment for processes in the Pi venv: no PYTHONPATH leaking the dev venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{pi_venv().parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return env


def run_pi(args: Sequence[str], cwd: Path | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the Pi venv's python with `args` (e.g. ["-c", code]); output captured as text."""
    return subprocess.run([str(pi_venv()), *args], capture_output=True, text=True, cwd=cwd,
                          env=pi_env_vars(), timeout=timeout)


def run_pi_edgecnn(args: Sequence[str], cwd: Path | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `edgecnn` console script installed in the Pi venv."""
    return subprocess.run([str(pi_venv().parent / "edgecnn"), *args], capture_output=True,
                          text=True, cwd=cwd, env=pi_env_vars(), timeout=timeout)


# jobs: [{"model", "inputs": [npy of samples x NHWC input], "output"}]; writes the
# stacked outputs per resolver and the output's (scale, zero point). It opens and feeds
# the files with the installed edgecnn's interpreter and quantize, as a device does.
RUNNER = r'''
import json, sys
import numpy as np
from edgecnn.qmath import affine_quantize
from edgecnn.runtime.backends.tflite import interpreter

jobs = json.load(open(sys.argv[1]))
for job in jobs:
    samples = [np.load(path) for path in job["inputs"]]
    for name, delegate in (("delegate", True), ("builtin", False)):
        it = interpreter(job["model"], backend="tflite_runtime", delegate=delegate)
        out, outputs = it.get_output_details()[0], []
        for i in range(len(samples[0])):
            for detail, x in zip(it.get_input_details(), samples):
                x = x[i]
                if np.issubdtype(detail["dtype"], np.integer):
                    x = affine_quantize(x, *detail["quantization"], detail["dtype"])
                it.set_tensor(detail["index"], x.astype(detail["dtype"]))
            it.invoke()
            outputs.append(it.get_tensor(out["index"]))
        np.save(job["output"] + "." + name + ".npy", np.concatenate(outputs))
        json.dump(list(map(float, out["quantization"])), open(job["output"] + ".q.json", "w"))
print(f"ran {len(jobs)} models")
'''


def run_on_pi(directory, jobs: list[dict]) -> dict[str, tuple[dict[str, np.ndarray], tuple]]:
    """Run the jobs in the Pi venv; per output stem: {resolver: outputs}, (scale, zero)."""
    (directory / "jobs.json").write_text(json.dumps(jobs))
    (directory / "runner.py").write_text(RUNNER)
    done = run_pi([str(directory / "runner.py"), str(directory / "jobs.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ran {len(jobs)} models" in done.stdout
    results = {}
    for job in jobs:
        stem = job["output"]
        quant = tuple(json.loads(open(stem + ".q.json").read()))
        results[stem] = ({r: np.load(f"{stem}.{r}.npy") for r in ("delegate", "builtin")}, quant)
    return results
