"""Per-op parity: every case of op_cases.CASES, float and QDQ, LiteRT vs onnxruntime.

Each case is converted and run on LiteRT twice (default XNNPACK delegate, and
the builtin kernels alone) and compared with onnxruntime running the same
ONNX model: float within 1e-5 of the output's largest magnitude; int8 within
one output quantization step. Each case also states the TFLite ops it must
lower to.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

pytest.importorskip("ai_edge_litert")

from op_cases import CASES, FLOAT_RTOL, IDS, Case, ort_run, quantize, run_litert  # noqa: E402

from edgecnn.export.tflite import to_flatbuffer  # noqa: E402
from edgecnn.verify.litert import op_counts  # noqa: E402


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float_parity(case: Case) -> None:
    model = case.model()
    data = to_flatbuffer(model)
    counts = op_counts(data)
    assert dict(counts) == case.ops
    feeds = case.feeds()
    ref = ort_run(model, feeds)
    for delegate in (True, False):
        out, _ = run_litert(data, feeds, delegate)
        assert out.shape == ref.shape
        error = np.abs(out - ref).max() / np.abs(ref).max()
        assert error <= FLOAT_RTOL, f"delegate={delegate}: relative error {error:.2e}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_int8_parity(case: Case, tmp_path) -> None:
    if case.qdq:
        pytest.skip(case.qdq)
    qdq = quantize(case)
    data = to_flatbuffer(qdq)
    assert dict(op_counts(data)) == (case.qdq_ops or case.ops)
    feeds = case.feeds()
    ref = ort_run(qdq, feeds)
    for delegate in (True, False):
        out, (scale, zero) = run_litert(data, feeds, delegate)
        assert out.dtype == np.int8
        expected = np.clip(np.round(ref / scale) + zero, -128, 127)
        steps = np.abs(out.astype(np.int32) - expected).max()
        assert steps <= 1, f"delegate={delegate}: {steps} quantization steps off"


@pytest.mark.parametrize("case", [c for c in CASES if c.id in
                                  ("conv3x3_bias_same", "sigmoid", "add_two_inputs")],
                         ids=lambda c: c.id)
def test_int8_float_io(case: Case, tmp_path) -> None:
    """io="float": one QUANTIZE per input, one DEQUANTIZE per output, float in and out."""
    qdq = quantize(case)
    data = to_flatbuffer(qdq, io="float")
    counts = op_counts(data)
    assert counts["QUANTIZE"] - (case.qdq_ops or {}).get("QUANTIZE", 0) == len(case.inputs)
    assert counts["DEQUANTIZE"] == 1
    feeds = case.feeds()
    ref = ort_run(qdq, feeds)
    out, _ = run_litert(data, feeds, delegate=True)
    assert out.dtype == np.float32
    scale = numpy_helper.to_array(next(
        i for i in qdq.graph.initializer if i.name.endswith("_scale") and
        any(n.op_type == "DequantizeLinear" and n.output[0] == "y" and n.input[1] == i.name
            for n in qdq.graph.node)))
    assert np.abs(out - ref).max() <= float(scale) * 1.001


def test_uint8_io_is_the_int8_file_shifted_by_128(tmp_path) -> None:
    """io="uint8": uint8 input and output, zero points + 128, one QUANTIZE at each edge; the
    outputs are the int8 file's plus 128, exactly (QUANTIZE int8 <-> uint8 at one scale)."""
    case = next(c for c in CASES if c.id == "conv3x3_bias_same")
    qdq = quantize(case)
    int8, uint8 = to_flatbuffer(qdq), to_flatbuffer(qdq, io="uint8")
    assert op_counts(uint8)["QUANTIZE"] == 2
    feeds = case.feeds()
    for delegate in (True, False):
        (a, (s_a, z_a)), (b, (s_b, z_b)) = (run_litert(data, feeds, delegate)
                                            for data in (int8, uint8))
        assert b.dtype == np.uint8 and s_a == s_b and z_b == z_a + 128
        np.testing.assert_array_equal(b.astype(np.int32), a.astype(np.int32) + 128)
