"""The second oracle: tflite-runtime 2.14 with numpy 1.24 (Raspberry Pi OS bookworm),
in its own virtual environment (`pi_env`). Every per-op parity case, float and
QDQ, converted here and run there, against onnxruntime with the same bars as on
LiteRT: float within 1e-5 relative, int8 within one output step. All models run
in one process there, with and without the default XNNPACK delegate.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from op_cases import CASES, FLOAT_RTOL, ort_run, quantize  # noqa: E402
from pi_env import pi_python_or_skip, run_on_pi  # noqa: E402

from edgecnn.export.tflite import to_flatbuffer  # noqa: E402


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


@pytest.mark.pi_venv
def test_tflite_runtime_2_14_agrees_with_onnxruntime(tmp_path) -> None:
    pi_python_or_skip()
    jobs, expected = [], []
    for case in CASES:
        float_model = case.model()
        variants = [("float", float_model)]
        if not case.qdq:
            variants.append(("int8", quantize(case)))
        feeds = case.feeds()
        inputs = []
        for name, value in feeds.items():
            inputs.append(str(tmp_path / f"{case.id}_{name}.npy"))
            np.save(inputs[-1], _nhwc(value)[None])
        for kind, model in variants:
            stem = str(tmp_path / f"{case.id}_{kind}")
            (tmp_path / f"{case.id}_{kind}.tflite").write_bytes(to_flatbuffer(model))
            jobs.append({"model": stem + ".tflite", "inputs": inputs, "output": stem})
            expected.append((f"{case.id}/{kind}", kind, ort_run(model, feeds), stem))
    results = run_on_pi(tmp_path, jobs)

    failures = []
    for label, kind, ref, stem in expected:
        outputs, (scale, zero) = results[stem]
        for runner, out in outputs.items():
            out = out.transpose(0, 3, 1, 2) if out.ndim == 4 else out
            if kind == "float":
                error = np.abs(out - ref).max() / np.abs(ref).max()
                if error > FLOAT_RTOL:
                    failures.append(f"{label} {runner}: relative error {error:.2e}")
            else:
                steps = np.abs(out.astype(np.int32) - np.clip(np.round(ref / scale) + zero,
                                                              -128, 127)).max()
                if steps > 1:
                    failures.append(f"{label} {runner}: {steps:.0f} steps off")
    assert not failures, failures
