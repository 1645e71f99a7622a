"""A zoo model end to end: dsc_net trained on digits, edgecnn PTQ, QDQ ONNX, .tflite.

The int8 .tflite (int8 in, int8 out) against the torch fake-quant reference and
against the int8 ONNX on onnxruntime, on all 359 validation images, with both
ONNX activation encodings as the converter's input: top-1 agreement >= 99% and
>= 99% of logits within one output quantization step, on LiteRT with XNNPACK and
on its builtin kernels (what tflite-runtime runs on a Pi).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ai_edge_litert")

from edgecnn.export.tflite import convert  # noqa: E402
from edgecnn.runtime.backends.tflite import interpreter  # noqa: E402
from edgecnn.verify.litert import (  # noqa: E402
    delegate_coverage,
    op_counts,
    run_images,
)

WITHIN_ONE_STEP = 0.99  # share of logits within one output quantization step


def run_tflite(path, nchw: np.ndarray, delegate: bool) -> tuple[np.ndarray, float]:
    """Dequantized logits of an int8-in, int8-out file, and the output scale."""
    interpreter_input = interpreter(path).get_input_details()[0]
    assert interpreter_input["dtype"] == np.int8
    assert list(interpreter_input["shape"]) == [1, *nchw.shape[2:], nchw.shape[1]]  # unpadded
    q, (scale, zero) = run_images(path, nchw, delegate=delegate)
    assert q.dtype == np.int8
    return (q.astype(np.float32) - zero) * scale, scale


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_int8_tflite_matches_fake_quant_and_onnx(dsc_reference, tmp_path, activations):
    _, converted, _, vx, vy, paths = dsc_reference
    with torch.no_grad():
        fake_quant = converted(vx).numpy()
    session = ort.InferenceSession(str(paths[activations]), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input": vx.numpy()})[0]
    out = convert(paths[activations], tmp_path / "dsc_net_int8.tflite")
    counts = op_counts(out)
    assert counts["TRANSPOSE"] == counts["QUANTIZE"] == counts["DEQUANTIZE"] == 0
    assert delegate_coverage(out).outside == 0
    for kernels in ("xnnpack", "builtin"):
        logits, scale = run_tflite(out, vx.numpy(), delegate=kernels == "xnnpack")
        assert (logits.argmax(1) == vy.numpy()).mean() >= 0.9
        for name, reference in (("fake-quant", fake_quant), ("onnxruntime", onnx_logits)):
            agreement = (logits.argmax(1) == reference.argmax(1)).mean()
            within = (np.abs(logits - reference) <= scale * 1.0001).mean()
            print(f"{activations} {kernels} vs {name}: top-1 agreement {agreement:.4f}, "
                  f"within one step {within:.4f}")
            assert agreement >= 0.99, (kernels, name, agreement)
            assert within >= WITHIN_ONE_STEP, (kernels, name, within)
