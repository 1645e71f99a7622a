"""The converter's edges: errors that name the culprit, the flatbuffer's structure,
the artifact record, the CLI, and importing without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ai_edge_litert")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402

from edgecnn.config import (  # noqa: E402
    ArtifactMetadata,
    Preprocessing,
    sidecar_path,  # noqa: E402
)
from edgecnn.errors import EdgecnnError, ParameterError  # noqa: E402
from edgecnn.export.tflite import convert, to_flatbuffer  # noqa: E402
from edgecnn.runtime.backends.tflite import interpreter  # noqa: E402
from edgecnn.runtime.tflite_meta import read_tflite_metadata  # noqa: E402
from edgecnn.verify.litert import op_counts  # noqa: E402


def _model(nodes, inits=None, x_shape=(1, 4, 8, 8), props=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    if props:
        helper.set_model_props(model, props)
    return model


def _conv_model(**attrs) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((8, 4 // attrs.get("group", 1), 3, 3))
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], name="stem_conv",
                                    pads=[1, 1, 1, 1], **attrs)],
                  {"w": w.astype(np.float32)})


def _record() -> ArtifactMetadata:
    return ArtifactMetadata(Preprocessing((8, 8), 3, (0.5,) * 3, (0.25,) * 3, ("a", "b")),
                            model="toy")


# -- errors -----------------------------------------------------------------------------

def test_unsupported_op_names_node_type_and_supported_ops() -> None:
    model = _model([helper.make_node("Cos", ["x"], ["y"], name="my_cos")])
    with pytest.raises(EdgecnnError) as info:
        to_flatbuffer(model)
    message = str(info.value)
    assert "'my_cos'" in message and "Cos" in message
    assert "supported ONNX ops:" in message and "Conv" in message and "HardSwish" in message


@pytest.mark.parametrize("attrs, fragment", [
    ({"group": 2}, None),  # grouped: a grouped CONV_2D
    ({"auto_pad": "SAME_LOWER", "kernel_shape": [3, 3]}, None),  # supported: no error
])
def test_conv_attributes(attrs, fragment) -> None:
    model = _conv_model(**attrs) if "auto_pad" not in attrs else _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="stem_conv", **attrs)],
        {"w": np.ones((8, 4, 3, 3), np.float32)})
    if fragment is None:
        assert op_counts(to_flatbuffer(model))["CONV_2D"] == 1
        return
    with pytest.raises(EdgecnnError, match=fragment) as info:
        to_flatbuffer(model)
    assert "'stem_conv' (Conv)" in str(info.value)


def test_unknown_attribute_lists_known_ones() -> None:
    node = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=-1, flavour=2)
    # onnx.checker (run first, issue 16) names the node, the op and the attribute
    with pytest.raises(EdgecnnError, match="node 'sm', Softmax.*attribute: flavour"):
        to_flatbuffer(_model([node], x_shape=(1, 10)))


def test_unsupported_attribute_value() -> None:
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transA=1)
    with pytest.raises(EdgecnnError, match="'fc' \\(Gemm\\): transA=1"):
        to_flatbuffer(_model([node], {"w": np.ones((4, 3), np.float32)}, x_shape=(4, 2)))


def test_dynamic_spatial_dimension_is_refused() -> None:
    with pytest.raises(EdgecnnError, match="dynamic dimension 2"):
        to_flatbuffer(_model([helper.make_node("Relu", ["x"], ["y"])],
                             x_shape=(1, 4, "height", 8)))


def test_data_dependent_shape_names_its_node() -> None:
    """NonZero's output length depends on the data: the error names the node that writes
    the dynamic tensor (it named only the tensor)."""
    node = helper.make_node("NonZero", ["x"], ["y"], name="my_nonzero")
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4))],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)]),
        opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(EdgecnnError, match=r"node 'my_nonzero' \(NonZero\): tensor 'y' has a "
                                           r"dynamic dimension 1"):
        to_flatbuffer(model)


def test_dynamic_batch_becomes_one() -> None:
    data = to_flatbuffer(_model([helper.make_node("Relu", ["x"], ["y"])],
                                x_shape=("batch", 4, 8, 8)))
    assert list(interpreter(data).get_input_details()[0]["shape"]) == [1, 8, 8, 4]


def test_bad_files_and_flags(tmp_path) -> None:
    with pytest.raises(EdgecnnError, match="does not exist"):
        convert(tmp_path / "missing.onnx", tmp_path / "out.tflite")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(EdgecnnError, match="garbage.onnx is not a readable ONNX model"):
        convert(garbage, tmp_path / "out.tflite")
    with pytest.raises(EdgecnnError, match="^io must be one of int8, uint8, float"):
        convert(_conv_model(), tmp_path / "out.tflite", io="bogus")
    with pytest.raises(EdgecnnError, match="^io 'uint8' is for a quantized model; .* is float"):
        convert(_conv_model(), tmp_path / "out.tflite", io="uint8")
    assert not (tmp_path / "out.tflite").exists()
    with pytest.raises(EdgecnnError):
        convert(_model([helper.make_node("Cos", ["x"], ["y"])]), tmp_path / "out.tflite")
    assert not list(tmp_path.glob("out.tflite*"))  # a failed conversion writes nothing
    with pytest.raises(ParameterError, match=r"^out_path .*out\.onnx: a TFLite file is named "
                                             r"\*\.tflite"):
        convert(_conv_model(), tmp_path / "out.onnx")
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(to_flatbuffer(_conv_model()))
    with pytest.raises(EdgecnnError, match="model.tflite is not a readable ONNX model"):
        convert(tflite, tflite)  # what `edgecnn convert model.tflite` asks (said --out)


# -- the flatbuffer -----------------------------------------------------------------------

def test_flatbuffer_structure() -> None:
    data = bytearray(to_flatbuffer(_conv_model()))
    assert schema.Model.ModelBufferHasIdentifier(data, 0)
    root = schema.Model.GetRootAs(data, 0)
    assert root.Version() == 3 and root.SubgraphsLength() == 1
    signature = root.SignatureDefs(0)
    assert signature.SignatureKey() == b"serving_default"
    assert signature.Inputs(0).Name() == b"x" and signature.Outputs(0).Name() == b"y"
    code = root.OperatorCodes(0)
    assert (code.BuiltinCode(), code.Version()) == (schema.BuiltinOperator.CONV_2D, 1)
    base = np.frombuffer(data, np.uint8).ctypes.data
    for i in range(root.BuffersLength()):
        if root.Buffers(i).DataLength():
            assert (root.Buffers(i).DataAsNumpy().ctypes.data - base) % 16 == 0


def test_int8_versions_follow_op_version_table() -> None:
    from edgecnn.export.tflite.builtins import BUILTINS

    x = "x"
    nodes = [helper.make_node("QuantizeLinear", [x, "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Mul", ["xd", "xd"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "s", "z"], ["y"])]
    model = _model(nodes, {"s": np.float32(0.5), "z": np.int8(0)})
    root = schema.Model.GetRootAs(to_flatbuffer(model), 0)
    versions = {root.OperatorCodes(i).BuiltinCode(): root.OperatorCodes(i).Version()
                for i in range(root.OperatorCodesLength())}
    # 0.5 * 0.5 / 0.5 < 1: the plain int8 MUL version
    assert versions == {schema.BuiltinOperator.MUL: BUILTINS.get("MUL").versions["int8"]}


# -- the artifact record --------------------------------------------------------------

def test_record_from_argument_overrides_and_float_model_has_no_quant(tmp_path) -> None:
    model = _conv_model()
    out = convert(model, tmp_path / "m.tflite", metadata=_record())
    text = read_tflite_metadata(out.read_bytes())["edgecnn"].decode()
    assert sidecar_path(out) == tmp_path / "m.tflite.json"
    assert sidecar_path(out).read_text() == text
    record = ArtifactMetadata.from_json(text)
    assert record.model == "toy" and record.preprocessing.layout == "NHWC"
    assert record.input_quant is None and record.output_quant is None


def test_no_record_no_sidecar(tmp_path) -> None:
    out = convert(_conv_model(), tmp_path / "plain.tflite")
    assert "edgecnn" not in read_tflite_metadata(out.read_bytes())
    assert not sidecar_path(out).exists()


def test_invalid_record_is_reported() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], props={"edgecnn": "{not json"})
    with pytest.raises(EdgecnnError, match="metadata_props 'edgecnn' is not an edgecnn"):
        to_flatbuffer(model)


# -- command line and install footprint ----------------------------------------------------

def _edgecnn(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edgecnn.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_cli_convert(tmp_path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])],
                     props={"edgecnn": _record().to_json()}), source)
    done = _edgecnn("convert", str(source))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.tflite").exists() and "RELU 1" in done.stdout
    assert json.loads((tmp_path / "m.tflite.json").read_text())["model"] == "toy"
    failed = _edgecnn("convert", str(tmp_path / "missing.onnx"))
    assert failed.returncode == 2 and "does not exist" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_converts_without_torch(tmp_path) -> None:
    """The runtime side never pulls torch through the exporter: convert with torch
    made unimportable and check no torch module got loaded."""
    source = tmp_path / "m.onnx"
    onnx.save(_conv_model(), source)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgecnn.export.tflite import convert\n"
        f"convert({str(source)!r}, {str(tmp_path / 'm.tflite')!r})\n"
        "loaded = [m for m, v in sys.modules.items() if m.split('.')[0] == 'torch' and v]\n"
        "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.tflite").stat().st_size > 0
