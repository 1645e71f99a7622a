"""Sessions over the real runtimes: parity with numpy, batching, int8 I/O, bad input."""

import numpy as np
import pytest
from tflite_writer import int8_reference_logits, write_tflite
from tiny_models import digits_classifier, metadata_json, write_onnx

from edgecnn.config import QuantParams, sidecar_path
from edgecnn.errors import EdgecnnError
from edgecnn.runtime import installed_backends, open_session
from edgecnn.runtime.session import pick_quant


@pytest.fixture(scope="module")
def val(digits_npz):
    from edgecnn.data import load

    data = load(f"npz:{digits_npz}")
    return data.val_images, data.val_labels


@pytest.mark.parametrize("name,backend,layout", [
    ("fp32.onnx", "onnxruntime", "NCHW"),
    ("fp32_b1.onnx", "onnxruntime", "NCHW"),
    ("fp32.tflite", "ai_edge_litert", "NHWC"),
    ("fp32_dyn.tflite", "ai_edge_litert", "NHWC"),
])
def test_float_artifacts_reproduce_the_numpy_logits(tiny_artifacts, val, name, backend, layout):
    images, labels = val
    expected = digits_classifier().logits(images)
    with open_session(tiny_artifacts[name]) as session:
        assert session.backend == backend and session.record.layout == layout
        logits = session.predict(images, batch_size=50)
        assert logits.dtype == np.float32 and logits.shape == (len(images), 10)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-5)
        as_float = session.predict(images.astype(np.float32) / 255.0)
        np.testing.assert_allclose(as_float, expected, atol=1e-4, rtol=1e-5)
    accuracy = (logits.argmax(1) == labels).mean()
    assert 0.85 < accuracy < 0.95  # a real classifier, not a constant one
    assert len(np.unique(logits.argmax(1))) == 10


def test_int8_io_is_quantized_with_the_tensors_own_parameters(tiny_artifacts, val):
    images, labels = val
    model = digits_classifier()
    with open_session(tiny_artifacts["int8.tflite"]) as session:
        assert session.input.dtype == np.int8 and session.output.dtype == np.int8
        detail = session._interpreter.get_input_details()[0]["quantization"]
        assert session.input.quant.scale == pytest.approx(detail[0], rel=1e-7)
        assert session.input.quant.zero_point == detail[1]
        logits = session.predict(images)
    out_scale = session.output.quant.scale
    expected = int8_reference_logits(model, images)
    assert np.abs(logits - expected).max() <= out_scale * 1.01  # within one output step
    float_pred = model.logits(images).argmax(1)
    assert (logits.argmax(1) == float_pred).mean() >= 0.97
    assert (logits.argmax(1) == labels).mean() > 0.85


def test_quantization_falls_back_to_the_metadata():
    meta = QuantParams(0.5, 3)
    assert pick_quant(QuantParams(0.1, -2), meta, np.dtype(np.int8)) == QuantParams(0.1, -2)
    assert pick_quant(QuantParams(0.0, 0), meta, np.dtype(np.int8)) == meta
    assert pick_quant(None, meta, np.dtype(np.uint8)) == meta
    assert pick_quant(QuantParams(0.1, 0), meta, np.dtype(np.float32)) is None


def test_fixed_and_dynamic_batches(tiny_artifacts, val, tmp_path):
    images = val[0][:37]
    expected = digits_classifier().logits(images)
    fixed = open_session(tiny_artifacts["fp32.tflite"])  # RESHAPE to (1, 64): cannot resize
    np.testing.assert_allclose(fixed.predict(images, batch_size=16), expected, atol=1e-4)
    assert fixed._resizable is False and fixed._batch == 1
    dynamic = open_session(tiny_artifacts["fp32_dyn.tflite"])
    np.testing.assert_allclose(dynamic.predict(images, batch_size=16), expected, atol=1e-4)
    assert dynamic._resizable is True and dynamic._batch == 5  # 16, 16, then the last 5
    four = open_session(write_onnx(digits_classifier(), tmp_path / "b4.onnx", batch=4))
    assert four.input.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(four.predict(images), expected, atol=1e-4)  # padded last chunk


def test_without_metadata_it_runs_raw_but_cannot_predict(tmp_path):
    bare = write_onnx(digits_classifier(), tmp_path / "bare.onnx", metadata=False)
    session = open_session(bare)
    assert session.metadata is None and session.num_classes == 10
    x = session.random_input(3)
    assert x.shape == (3, 1, 8, 8) and x.dtype == np.float32
    assert session.run(x).shape == (3, 10)
    with pytest.raises(EdgecnnError, match=r"bare\.onnx: no edgecnn metadata .*bare\.onnx\.json"):
        session.predict(np.zeros((1, 8, 8), np.uint8))


def test_input_shape_mismatch_names_the_expected_shape(tiny_artifacts, tmp_path):
    session = open_session(tiny_artifacts["fp32.onnx"])
    with pytest.raises(EdgecnnError, match=r"fp32\.onnx: input shape mismatch: the model "
                                           r"expects \(N, 1, 8, 8\) float32 NCHW, got "
                                           r"\(2, 1, 16, 16\)"):
        session.run(np.zeros((2, 1, 16, 16), np.float32))
    model = digits_classifier()
    bare = write_tflite(model, tmp_path / "m.tflite", metadata=False)
    record = metadata_json(model, "NHWC").replace('"input_size": [8, 8]', '"input_size": [16, 16]')
    sidecar_path(bare).write_text(record)
    with pytest.raises(EdgecnnError, match=r"m\.tflite: input shape mismatch: the model expects "
                                           r"\(1, 8, 8, 1\) float32 NHWC, but its preprocessing "
                                           r"record gives \(1, 16, 16, 1\) \(input_size 16x16"):
        open_session(bare).predict(np.zeros((1, 8, 8), np.uint8))


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, "truncated"])
def test_corrupt_onnx_is_one_line_naming_the_file(tiny_artifacts, tmp_path, content):
    if content == "truncated":
        content = tiny_artifacts["fp32.onnx"].read_bytes()[:200]
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(EdgecnnError, match=r"broken\.onnx: not a loadable ONNX model") as info:
        open_session(path)
    assert "\n" not in str(info.value)


def test_backend_choice_and_errors(tiny_artifacts, tmp_path):
    installed = installed_backends()
    assert {"onnxruntime", "ai_edge_litert"} <= set(installed)
    listed = ", ".join(installed)
    with pytest.raises(EdgecnnError, match=f"unknown backend 'tensorrt'; installed: {listed}"):
        open_session(tiny_artifacts["fp32.onnx"], backend="tensorrt")
    with pytest.raises(EdgecnnError, match=r"backend 'onnxruntime' opens \.onnx files, not "
                                           r"\.tflite"):
        open_session(tiny_artifacts["fp32.tflite"], backend="onnxruntime")
    with pytest.raises(EdgecnnError, match=r"unknown artifact type '\.bin'; supported: \.onnx, "
                                           r"\.pt2, \.tflite"):
        open_session(tmp_path / "model.bin")
    with pytest.raises(EdgecnnError, match=r"missing\.tflite: file not found"):
        open_session(tmp_path / "missing.tflite")
    if "tflite_runtime" not in installed:
        with pytest.raises(EdgecnnError, match=r"backend 'tflite_runtime' is not installed "
                                               r"\(pip install tflite-runtime\); installed: "):
            open_session(tiny_artifacts["fp32.tflite"], backend="tflite_runtime")
    with pytest.raises(EdgecnnError, match="threads must be at least 1"):
        open_session(tiny_artifacts["fp32.onnx"], threads=0)


def test_thread_counts_give_identical_logits(tiny_artifacts, val):
    images = val[0][:20]
    for name in ("fp32.onnx", "int8.tflite"):
        one = open_session(tiny_artifacts[name], threads=1).predict(images)
        two = open_session(tiny_artifacts[name], threads=2).predict(images)
        np.testing.assert_array_equal(one, two)


def test_torch_program_with_embedded_metadata(tmp_path, val):
    torch = pytest.importorskip("torch")
    model = digits_classifier()
    conv = torch.nn.Conv2d(1, 10, 8)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(model.weights.reshape(10, 1, 8, 8)))
        conv.bias.copy_(torch.from_numpy(model.bias))
    net = torch.nn.Sequential(conv, torch.nn.Flatten()).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: batch},))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path), extra_files={"edgecnn": metadata_json(model, "NCHW")})
    session = open_session(path)
    assert session.backend == "torch" and session.input.shape == (None, 1, 8, 8)
    np.testing.assert_allclose(session.predict(val[0]), model.logits(val[0]), atol=1e-4)


def test_quantize_rounds_half_to_even_and_saturates():
    """One quantize for every integer input (sessions, parity helpers, inspect): the QDQ
    model's QuantizeLinear as onnxruntime runs it (ties to even), not TFLite's QUANTIZE
    reference rounding (ties away from zero)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgecnn.qmath import affine_dequantize, affine_quantize

    x = np.array([0.25, -0.25, 0.75, -0.75, 100.0, -100.0], np.float32)  # /0.5: 0.5, -0.5, 1.5
    assert affine_quantize(x, 0.5, -3, np.int8).tolist() == [-3, -3, -1, -5, 127, -128]
    assert affine_quantize(x, 0.5, 125, np.uint8).tolist() == [125, 125, 127, 123, 255, 0]
    for dtype, onnx_type, zero in ((np.int8, TensorProto.INT8, -3),
                                   (np.uint8, TensorProto.UINT8, 125)):
        graph = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
            [helper.make_tensor_value_info("y", onnx_type, [6])],
            [helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]),
             helper.make_tensor("z", onnx_type, [], [zero])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                  ir_version=9)
        session = ort.InferenceSession(model.SerializeToString(), providers=[
            "CPUExecutionProvider"])
        assert session.run(None, {"x": x})[0].tolist() == \
            affine_quantize(x, 0.5, zero, dtype).tolist()
    assert affine_dequantize(np.array([-3, 1], np.int8), 0.5, -3).tolist() == [0.0, 2.0]
