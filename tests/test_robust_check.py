"""Issue 16, kinds 3 and 4: no damaged model crashes the process or is written by convert.

Each reproduction is a real artifact of a small dsc_net with one value edited, run through
the real CLI in a subprocess: the outcome must be exit 2 and exactly one `error:` line
naming the file and what is wrong."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
from pathlib import Path

import flatbuffers
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("ai_edge_litert")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402

from edgecnn.errors import EdgecnnError  # noqa: E402
from edgecnn.runtime.check import check_file  # noqa: E402
from edgecnn.runtime.predict_worker import PredictWorker  # noqa: E402


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def _edit_tflite(source: Path, target: Path, edit) -> Path:
    data = source.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    edit(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(bytes(builder.Output()))
    if Path(f"{source}.json").exists():
        shutil.copy(f"{source}.json", f"{target}.json")
    return target


def _first_op(model, option_type):
    return next(op for op in model.subgraphs[0].operators
                if isinstance(op.builtinOptions, option_type))


def _stride0(model):
    _first_op(model, schema.Conv2DOptionsT).builtinOptions.strideW = 0


def _depth99(model):
    _first_op(model, schema.DepthwiseConv2DOptionsT).builtinOptions.depthMultiplier = 99


def _nan_scale(model):
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.operators[0].outputs[0]]
    tensor.quantization.scale = [math.nan]


def _zero_point(model):
    graph = model.subgraphs[0]
    graph.tensors[graph.operators[0].outputs[0]].quantization.zeroPoint = [300]


def _const_input(model):
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.inputs[0]]
    buffer = schema.BufferT()
    buffer.data = [0] * int(np.prod(tensor.shape))
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1


def _zero_shape(model):
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.operators[1].outputs[0]]
    tensor.shape = [1, 0, *list(tensor.shape)[2:]]


@pytest.mark.parametrize("edit, expected", [
    (_stride0, "stride_w 0"), (_depth99, "depth_multiplier 99"), (_nan_scale, "scale nan"),
    (_zero_point, "zero point 300"), (_const_input, "constant buffer"),
    (_zero_shape, "every dimension must be >= 1"),
])
def test_invalid_tflite_is_refused_before_any_runtime(robust_base, tmp_path, edgecnn_cmd, edit,
                                                      expected):
    bad = _edit_tflite(robust_base / "model_int8.tflite", tmp_path / "bad.tflite", edit)
    for argv in (["validate", "--reference", str(robust_base / "model_fp32.onnx"),
                  "--candidate", str(bad), "--data", f"npz:{robust_base / 'val.npz'}"],
                 ["bench", str(bad), "--runs", "1", "--warmup", "0"]):
        line = _one_error_line(subprocess.run([*edgecnn_cmd, *argv], capture_output=True,
                                              text=True, timeout=300))
        assert "bad.tflite" in line and expected in line, line


def _edit_onnx(source: Path, target: Path, edit) -> Path:
    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(target))
    return target


def _negative_scale(model):
    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
                and n.input[1] in inits and numpy_helper.to_array(inits[n.input[1]]).size == 1)
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.float32(-0.05), node.input[1]))


def _conv_stride0(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [0, 0]


@pytest.mark.parametrize("edit, expected", [(_negative_scale, "scale [-0.05"),
                                            (_conv_stride0, "strides [0, 0]")])
def test_invalid_qdq_onnx_is_refused_by_validate_bench_and_convert(robust_base, tmp_path,
                                                                   edgecnn_cmd, edit, expected):
    bad = _edit_onnx(robust_base / "model_int8.onnx", tmp_path / "bad.onnx", edit)
    for argv in (["validate", "--reference", str(robust_base / "model_fp32.onnx"),
                  "--candidate", str(bad), "--data", f"npz:{robust_base / 'val.npz'}"],
                 ["bench", str(bad), "--runs", "1", "--warmup", "0"],
                 ["convert", str(bad), "--out", str(tmp_path / "out.tflite")]):
        line = _one_error_line(subprocess.run([*edgecnn_cmd, *argv], capture_output=True,
                                              text=True, timeout=300))
        assert "bad.onnx" in line and expected in line, line
    assert not (tmp_path / "out.tflite").exists()


def test_a_runtime_crash_in_validate_is_one_line_naming_file_and_signal(robust_base):
    """The worker that runs the runtime dies of a signal mid-way: one line, no crash."""
    worker = PredictWorker(robust_base / "model_int8.tflite")
    try:
        worker.ready()
        worker._proc.send_signal(signal.SIGSEGV)
        worker._proc.wait(timeout=30)
        with pytest.raises(EdgecnnError, match=r"model_int8.tflite: the runtime died of "
                                               r"SIGSEGV \(signal 11\)"):
            worker.predict(robust_base / "val.npz", 8)
    finally:
        worker.close()


def test_good_artifacts_pass_the_structural_check(robust_base):
    for name in ("model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_int8.tflite"):
        check_file(robust_base / name)


# --- convert (kind 4) -----------------------------------------------------------------------

def test_convert_refuses_an_empty_file(tmp_path, edgecnn_cmd):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    line = _one_error_line(subprocess.run([*edgecnn_cmd, "convert", str(empty)],
                                          capture_output=True, text=True, timeout=300))
    assert "empty.onnx" in line and "empty file" in line
    assert not (tmp_path / "empty.tflite").exists()


def _rename_output(model):
    model.graph.output[0].name = "missing"


def _bias_dtype(model):
    bias = next(i for i in model.graph.initializer if len(i.dims) == 1 and i.data_type == 1)
    bias.data_type = onnx.TensorProto.DOUBLE


def _empty_graph(model):
    del model.graph.node[:]


@pytest.mark.parametrize("edit, expected", [(_rename_output, "'missing' is produced by no node"),
                                            (_bias_dtype, "cannot be read"),
                                            (_empty_graph, "no nodes")])
def test_convert_refuses_malformed_graphs(robust_base, tmp_path, edgecnn_cmd, edit, expected):
    bad = _edit_onnx(robust_base / "model_fp32.onnx", tmp_path / "bad.onnx", edit)
    line = _one_error_line(subprocess.run([*edgecnn_cmd, "convert", str(bad), "--out",
                                           str(tmp_path / "bad.tflite")],
                                          capture_output=True, text=True, timeout=300))
    assert "bad.onnx" in line and expected in line, line
    assert not (tmp_path / "bad.tflite").exists()


def test_convert_never_overwrites_its_input(robust_base, tmp_path, edgecnn_cmd):
    """--out must be a *.tflite other than the input: an ONNX file given as its own output
    is refused as named; an ONNX file misnamed *.tflite, as the input model."""
    for name, expected in (("m.onnx", "m.onnx: a TFLite file is named *.tflite"),
                           ("m.tflite", "is the input model")):
        model = shutil.copy(robust_base / "model_fp32.onnx", tmp_path / name)
        before = Path(model).read_bytes()
        line = _one_error_line(subprocess.run([*edgecnn_cmd, "convert", str(model), "--out",
                                               str(model)], capture_output=True, text=True,
                                              timeout=300))
        assert expected in line and line.startswith("error: --out"), line
        assert Path(model).read_bytes() == before
