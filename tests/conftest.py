"""Shared fixtures: real digits data, fp32 references trained once per session, tiny artifacts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# --- data and reference checkpoints ---------------------------------------------------------

#: Short schedules that reach >= 95% validation accuracy on digits (small-input, 32 px).
REFERENCE_SCHEDULES = {
    "dsc_net": {"epochs": 10, "lr": 5e-3},
    "mobilenet_v1": {"epochs": 5, "lr": 2e-3},
    "mobilenet_v2": {"epochs": 6, "lr": 2e-3},
    "efficientnet_lite0": {"epochs": 5, "lr": 2e-3},
    "efficientnet_b0": {"epochs": 5, "lr": 2e-3},
    "mobilenet_v3_small": {"epochs": 8, "lr": 3e-3},
    "mobilenet_v3_large": {"epochs": 6, "lr": 2e-3},
}


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset with the default seeded split."""
    from edgecnn.data import load

    return load("digits")


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory):
    """`reference_checkpoint(name) -> Path`: an fp32 checkpoint dir trained on digits.

    Each model is trained once per session and shared by the tests that ask for it.
    """
    trained: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in trained:
            from edgecnn.reference import Training, train_reference
            from edgecnn.train import TrainConfig

            directory = tmp_path_factory.mktemp(f"reference_{name}")
            train_reference(name, "digits", directory,
                            Training(TrainConfig(**REFERENCE_SCHEDULES[name])),
                            show_progress=False)
            trained[name] = directory
        return trained[name]

    return get


# --- runtime: blocked imports, tiny real artifacts, digits as npz ---------------------------

_BLOCKER = '''"""Test-only: make the modules named in EDGECNN_BLOCK_IMPORTS unimportable."""
import os
import sys

_BLOCKED = tuple(n for n in os.environ.get("EDGECNN_BLOCK_IMPORTS", "").split(",") if n)


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)",
                                      name=name)
        return None


sys.meta_path.insert(0, _Blocker())
'''


@pytest.fixture(scope="session")
def blocked_imports_env(tmp_path_factory) -> callable:
    """`env(*modules)` -> an environment in which those modules cannot be imported.

    A `sitecustomize` on PYTHONPATH installs the blocker at interpreter start, so it
    also holds in subprocesses the command spawns (e.g. bench workers).
    """
    site = tmp_path_factory.mktemp("blocker")
    (site / "sitecustomize.py").write_text(_BLOCKER)

    def env(*modules: str) -> dict[str, str]:
        result = dict(os.environ)
        result["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
        result["EDGECNN_BLOCK_IMPORTS"] = ",".join(modules)
        result.pop("GITHUB_STEP_SUMMARY", None)
        return result

    return env


@pytest.fixture(scope="session")
def edgecnn_cmd() -> list[str]:
    """The `edgecnn` command of the running interpreter (works without the console script)."""
    return [sys.executable, "-c", "import sys; from edgecnn.cli import main; "
            "sys.argv[0] = 'edgecnn'; main()"]


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """Real ONNX and TFLite digits classifiers with "edgecnn" metadata (see tiny_models.py).

    fp32.onnx (dynamic batch), fp32_b1.onnx (fixed batch 1), fp32.tflite (fixed batch 1),
    fp32_dyn.tflite (dynamic batch), int8.tflite (int8 I/O), worse.onnx (noisy weights).
    """
    from tflite_writer import write_tflite
    from tiny_models import digits_classifier, write_onnx

    out = tmp_path_factory.mktemp("artifacts")
    model = digits_classifier()
    return {
        "fp32.onnx": write_onnx(model, out / "fp32.onnx"),
        "fp32_b1.onnx": write_onnx(model, out / "fp32_b1.onnx", batch=1),
        "fp32.tflite": write_tflite(model, out / "fp32.tflite"),
        "fp32_dyn.tflite": write_tflite(model, out / "fp32_dyn.tflite", dynamic_batch=True),
        "int8.tflite": write_tflite(model, out / "int8.tflite", int8=True),
        "worse.onnx": write_onnx(model.perturbed(1.0), out / "worse.onnx"),
    }


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory) -> Path:
    """The digits validation split as npz (readable without scikit-learn, e.g. on a Pi)."""
    from edgecnn.data import load, save_npz

    path = tmp_path_factory.mktemp("data") / "digits_val.npz"
    save_npz(load("digits"), path, validation_only=True)
    return path


@pytest.fixture(scope="session")
def dsc_reference(reference_checkpoint, digits, tmp_path_factory):
    """fp32 and PTQ int8 dsc_net trained on digits, exported to ONNX (int8 and uint8
    activations): `(model, converted, config, val_x, val_y, paths)`."""
    from edgecnn import quant
    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.export import onnx as onnx_export
    from edgecnn.train import to_tensors

    model, config = load_checkpoint(reference_checkpoint("dsc_net"))
    x, _ = to_tensors(digits.train_images, digits.train_labels, config.preprocessing)
    vx, vy = to_tensors(digits.val_images, digits.val_labels, config.preprocessing)
    converted = quant.quantize(model, x[:2], quant.PTQ(calib_batches=8), train_data=x)
    out = tmp_path_factory.mktemp("onnx")
    paths = {"fp32": onnx_export.export_fp32(model, config.preprocessing, out / "fp32.onnx")}
    for act in onnx_export.ACTIVATION_TYPES:
        paths[act] = onnx_export.export_qdq(converted, config.preprocessing,
                                             out / f"int8_{act}.onnx", activations=act)
    return model, converted, config, vx, vy, paths


@pytest.fixture(scope="session")
def robust_base(tmp_path_factory) -> Path:
    """Good artifacts of one small dsc_net on digits (2 epochs, PTQ), made once per session
    by `export --int8`'s own pipeline: fp32/int8 .onnx and .tflite, model_int8.pt2, the
    checkpoint directory and the validation split as val.npz (see fuzz_artifacts.make_base)."""
    from fuzz_artifacts import make_base

    return make_base(tmp_path_factory.mktemp("robust"), epochs=2)
