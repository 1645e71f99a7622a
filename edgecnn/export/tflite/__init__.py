"""ONNX (fp32 or QDQ int8) -> TFLite flatbuffer, without TensorFlow.

    import ONNX -> ONNX_PASSES (fold constants, fold QDQ, NHWC) -> lower each op
    -> TFLITE_PASSES (fuse activations, int8 spec constraints) -> flatbuffer

QDQ models become full-int8 models with int8 input and output (`io="int8"`),
or with one QUANTIZE / DEQUANTIZE at the edges (`io="float"`). Imports no
torch: a device may convert.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from edgecnn.config import METADATA_KEY, ArtifactMetadata, QuantParams, sidecar_path
from edgecnn.errors import EdgecnnError, ParameterError, first_line
from edgecnn.export.onnx_passes import unpad_input_channels
from edgecnn.export.tflite.graph import Graph, import_onnx
from edgecnn.export.tflite.ops import LOWERINGS, lower_graph
from edgecnn.export.tflite.passes import ONNX_PASSES, TFLITE_PASSES, float_io, name_io, uint8_io
from edgecnn.runtime.check import check_onnx, check_tflite
from edgecnn.util import atomic_write, listing

IO_MODES = ("int8", "uint8", "float")


class ConversionWarning(UserWarning):
    """What the converter did that changes or adds to the QDQ model's quantization."""

__all__ = ["IO_MODES", "LOWERINGS", "ConversionWarning", "convert", "to_flatbuffer"]


def _load(model: onnx.ModelProto | str | Path) -> tuple[onnx.ModelProto, str]:
    """Read and check the model: `onnx.checker` (full: with strict shape inference), then
    `edgecnn.runtime.check.check_onnx` (empty graph, dangling outputs, scales, strides)."""
    if isinstance(model, onnx.ModelProto):
        proto, where = model, "ONNX model"
    else:
        path = Path(model)
        if path.is_dir():
            raise EdgecnnError(f"ONNX model {path} is a directory, not a file")
        if not path.is_file():
            raise EdgecnnError(f"ONNX model {path} does not exist")
        if path.stat().st_size == 0:
            raise EdgecnnError(f"{path}: empty file, not an ONNX model")
        try:
            proto, where = onnx.load(str(path)), str(path)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors have several types
            raise EdgecnnError(f"{path} is not a readable ONNX model: {first_line(exc)}") \
                from None
    check_onnx(proto, where)
    try:
        # strict shape inference first: it also fills the output types a hand-built graph
        # may leave without a shape, which the checker alone would reject
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and shape-inference errors
        node = re.search(r"Name: (\S*) OpType: (\S+)", str(exc))
        at = f" (node {node.group(1)!r}, {node.group(2)})" if node else ""
        raise EdgecnnError(f"{where}: onnx.checker rejects the model{at}: "
                           f"{first_line(exc)}") from None
    return proto, where


def _io_quant(graph: Graph, name: str) -> QuantParams | None:
    tensor = graph.tensor(name)
    if tensor.quant is None or tensor.dtype not in (np.int8, np.uint8):
        return None
    return QuantParams(float(tensor.quant.scale[0]), int(tensor.quant.zero_point[0]),
                       str(tensor.dtype))


def _metadata(graph: Graph, given: ArtifactMetadata | None, where: str) -> ArtifactMetadata | None:
    """The artifact record: NHWC layout, and the int8 I/O parameters of this file."""
    if given is None:
        text = graph.metadata.get(METADATA_KEY)
        if text is None:
            return None
        try:
            given = ArtifactMetadata.from_json(text, "the record")
        except (EdgecnnError, ValueError, KeyError, TypeError) as exc:
            raise EdgecnnError(f"{where}: metadata_props {METADATA_KEY!r} is not an edgecnn "
                               f"artifact record: {exc}") from None
    return replace(given, preprocessing=given.preprocessing.with_layout("NHWC"),
                   input_quant=_io_quant(graph, graph.inputs[0]),
                   output_quant=_io_quant(graph, graph.outputs[0]))


def _check_int8_inputs(graph: Graph, io: str, where: str) -> None:
    """io="int8" / "uint8" promise integer inputs: refuse a quantized graph whose input
    stays float."""
    if io == "float" or not graph.quantized:
        return
    for name, key in zip(graph.inputs, graph.input_keys, strict=True):
        if graph.tensor(name).quant is None:
            raise EdgecnnError(f"{where}: io={io!r} needs a quantized model input, but input "
                               f"{key!r} is float (no QuantizeLinear reads it); convert with "
                               f"io='float' or quantize the op that reads it")


def _report_notes(graph: Graph, where: str) -> None:
    """One ConversionWarning per kind of note the passes recorded, naming the nodes."""
    for kind, names in graph.notes.items():
        warnings.warn(f"{where}: {len(names)} op(s): {kind}: {listing(names)}", ConversionWarning,
                      stacklevel=4)


def _build(model: onnx.ModelProto | str | Path, io: str, metadata: ArtifactMetadata | None,
           name: str | None = None) -> tuple[bytes, ArtifactMetadata | None]:
    if io not in IO_MODES:
        raise ParameterError("io", f"must be one of {', '.join(IO_MODES)}, got {io!r}")
    proto, where = _load(model)
    where = name or where
    graph = import_onnx(unpad_input_channels(proto), where)
    for rewrite in ONNX_PASSES:
        rewrite(graph)
    lower_graph(graph)
    for rewrite in TFLITE_PASSES:
        rewrite(graph)
    if io == "uint8" and not graph.quantized:  # a float model's I/O stays float
        raise ParameterError("io", f"'uint8' is for a quantized model; {where} is float")
    _check_int8_inputs(graph, io, where)
    _report_notes(graph, where)
    if io == "float":
        float_io(graph)
    elif io == "uint8":
        uint8_io(graph)
    graph.prune()
    name_io(graph)
    record = _metadata(graph, metadata, where)
    try:
        from edgecnn.export.tflite.writer import write_model
    except ImportError:
        raise EdgecnnError("writing .tflite files needs the TFLite schema from ai-edge-litert: "
                           "pip install 'edgecnn[tflite]'") from None
    extra = {METADATA_KEY: record.to_json().encode()} if record else None
    data = write_model(graph, metadata=extra)
    if not graph.ops:
        raise EdgecnnError(f"{where}: the converted model has no operators")
    check_tflite(data, f"{where} (converted)")  # never write what a runtime would crash on
    return data, record


def to_flatbuffer(model: onnx.ModelProto | str | Path, *, io: str = "int8",
                  metadata: ArtifactMetadata | None = None) -> bytes:
    """The .tflite bytes for an ONNX model (a ModelProto or a path)."""
    return _build(model, io, metadata)[0]


def convert(onnx_model_or_path: onnx.ModelProto | str | Path, out_path: str | Path, *,
            io: str = "int8", metadata: ArtifactMetadata | None = None) -> Path:
    """Convert an ONNX model to a .tflite file; returns its path.

    `io="int8"` keeps a QDQ model's input and output int8; `"uint8"` makes them
    uint8 (zero point + 128, one QUANTIZE at each edge); `"float"` adds a
    QUANTIZE / DEQUANTIZE pair at the edges (float models are float either
    way). The artifact record (`metadata`, else the ONNX `metadata_props`
    entry "edgecnn") goes into the file's "edgecnn" metadata buffer and into
    the sidecar `<out>.json`, with layout NHWC and the int8 I/O parameters.

    The input is best the canonical QDQ model (`export.onnx.qdq_model`, as the
    pipeline passes it); the onnxruntime variant edgecnn ships as model_int8.onnx is
    read too (uint8 activations like any uint8 QDQ file; its zero-padded stem channels
    are removed by `onnx_passes.unpad_input_channels`).

    Raises EdgecnnError naming the file, node or op that cannot be converted, and
    ParameterError (out_path) for an output not named *.tflite or equal to the input.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".tflite":
        raise ParameterError("out_path", f"{out_path}: a TFLite file is named *.tflite",
                             flag="--out")
    if not isinstance(onnx_model_or_path, onnx.ModelProto) and out_path.exists() \
            and Path(onnx_model_or_path).exists() \
            and out_path.resolve() == Path(onnx_model_or_path).resolve():
        _load(onnx_model_or_path)  # a .tflite given as the input: say it is not ONNX
        raise ParameterError("out_path", f"{out_path} is the input model; choose another "
                             "path", flag="--out")
    named = str(out_path) if isinstance(onnx_model_or_path, onnx.ModelProto) else None
    data, record = _build(onnx_model_or_path, io, metadata, named)
    with atomic_write(out_path) as tmp:
        tmp.write_bytes(data)
    if record is not None:
        with atomic_write(sidecar_path(out_path)) as tmp:
            tmp.write_text(record.to_json(), encoding="utf-8")
    return out_path
