"""Structural checks of .tflite and ONNX models, before any runtime sees them.

The runtimes trust the numbers in a file: a CONV_2D with stride 0 raises
SIGFPE in tflite-runtime 2.14, a subgraph input with a constant buffer
crashes LiteRT and tflite-runtime, a negative scale in a QDQ model crashes
onnxruntime's average-pool kernel, a NaN scale gives a .tflite that
segfaults LiteRT, and a depthwise depth multiplier of 99 loads and computes
garbage. These checks refuse such files with one line naming the file, the
tensor or node, and the value:

- shapes: every dimension >= 1, at most `MAX_ELEMENTS` elements per tensor;
- quantization: scales finite and > 0, zero points within the tensor type's
  range, one zero point per scale, per-channel counts matching the quantized
  dimension (TFLite quantization spec, tensorflow.org/lite/performance/quantization_spec);
- constant buffers: their size matches the tensor's shape and type; no
  subgraph input carries one;
- convolution and pooling: strides, dilations and filter sizes >= 1,
  paddings >= 0, a depthwise multiplier consistent with the channels.

`check_tflite` needs nothing but `struct` (a Raspberry Pi runs it);
`check_onnx` needs the `onnx` package and is skipped by `check_file` where
it is not installed (the runtime then still runs in a worker process).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

from edgecnn.errors import EdgecnnError
from edgecnn.runtime.tflite_meta import _Corrupt, _Reader, check_identifier, verify_tflite

#: Upper bound on the elements of one tensor (256 Mi: 1 GiB of float32).
MAX_ELEMENTS = 2**28
#: Upper bound on one dimension of a model input.
MAX_INPUT_DIM = 2**15

# TFLite TensorType -> (name, bytes per element, zero point range or None)
_TFLITE_TYPES: dict[int, tuple[str, int, tuple[int, int] | None]] = {
    0: ("FLOAT32", 4, None), 1: ("FLOAT16", 2, None), 2: ("INT32", 4, (-2**31, 2**31 - 1)),
    3: ("UINT8", 1, (0, 255)), 4: ("INT64", 8, (-2**63, 2**63 - 1)), 6: ("BOOL", 1, None),
    7: ("INT16", 2, (-32768, 32767)), 9: ("INT8", 1, (-128, 127)), 10: ("FLOAT64", 8, None),
    16: ("UINT16", 2, (0, 65535)),
}
# Builtin operator codes (schema.fbs BuiltinOperator) with spatial options.
_AVERAGE_POOL_2D, _CONV_2D, _DEPTHWISE_CONV_2D, _MAX_POOL_2D, _TRANSPOSE_CONV = 1, 3, 4, 17, 67
_L2_POOL_2D = 12
# Options table field indices: name -> (index, struct format, default)
_CONV_FIELDS = {"padding": (0, "<b", 0), "stride_w": (1, "<i", 0), "stride_h": (2, "<i", 0),
                "fused_activation_function": (3, "<b", 0), "dilation_w": (4, "<i", 1),
                "dilation_h": (5, "<i", 1)}
_DEPTHWISE_FIELDS = {"padding": (0, "<b", 0), "stride_w": (1, "<i", 0), "stride_h": (2, "<i", 0),
                     "depth_multiplier": (3, "<i", 0), "fused_activation_function": (4, "<b", 0),
                     "dilation_w": (5, "<i", 1), "dilation_h": (6, "<i", 1)}
_POOL_FIELDS = {"padding": (0, "<b", 0), "stride_w": (1, "<i", 0), "stride_h": (2, "<i", 0),
                "filter_width": (3, "<i", 0), "filter_height": (4, "<i", 0),
                "fused_activation_function": (5, "<b", 0)}
_TRANSPOSE_CONV_FIELDS = {"padding": (0, "<b", 0), "stride_w": (1, "<i", 0),
                          "stride_h": (2, "<i", 0), "fused_activation_function": (3, "<b", 0)}
_OPTIONS = {_CONV_2D: ("CONV_2D", _CONV_FIELDS),
            _DEPTHWISE_CONV_2D: ("DEPTHWISE_CONV_2D", _DEPTHWISE_FIELDS),
            _AVERAGE_POOL_2D: ("AVERAGE_POOL_2D", _POOL_FIELDS),
            _MAX_POOL_2D: ("MAX_POOL_2D", _POOL_FIELDS), _L2_POOL_2D: ("L2_POOL_2D", _POOL_FIELDS),
            _TRANSPOSE_CONV: ("TRANSPOSE_CONV", _TRANSPOSE_CONV_FIELDS)}
_AT_LEAST_ONE = ("stride_w", "stride_h", "dilation_w", "dilation_h", "filter_width",
                 "filter_height")


class _Invalid(Exception):
    """Internal: a value the format allows but no runtime can run."""


def _check_quant(reader: _Reader, tensor: int, name: str, ttype: int,
                 shape: list[int]) -> None:
    pos = reader.field(tensor, 4)
    if pos is None:
        return
    q = reader.table(reader.deref(pos))
    scales = reader.int_vector(q, 2, "<f")
    zero_points = reader.int_vector(q, 3, "<q")
    if not scales:
        return
    for s in scales:
        if not math.isfinite(s) or s <= 0:
            raise _Invalid(f"tensor {name!r} has quantization scale {s}; scales must be finite "
                           "and > 0")
    if zero_points and len(zero_points) != len(scales):
        raise _Invalid(f"tensor {name!r} has {len(scales)} scales but {len(zero_points)} "
                       "zero points")
    limits = _TFLITE_TYPES.get(ttype, ("", 0, None))[2]
    for z in zero_points:
        if limits and not limits[0] <= z <= limits[1]:
            raise _Invalid(f"tensor {name!r} ({_TFLITE_TYPES[ttype][0]}) has zero point {z}, "
                           f"outside {limits[0]}..{limits[1]}")
    if len(scales) > 1:
        axis = reader.scalar(q, 6, "<i")
        if not 0 <= axis < len(shape) or shape[axis] != len(scales):
            raise _Invalid(f"tensor {name!r} has {len(scales)} per-channel scales on dimension "
                           f"{axis} of shape {shape}")


def _tensor_facts(reader: _Reader, tensor: int, buffers: list[int]) -> tuple[str, list[int],
                                                                              int, bool]:
    """(name, shape, type, has constant data) after checking shape, type and buffer size."""
    name = reader.string(tensor, 3)
    shape = reader.int_vector(tensor, 0)
    ttype = reader.scalar(tensor, 1, "<b")
    if ttype not in _TFLITE_TYPES:
        raise _Invalid(f"tensor {name!r} has unsupported type {ttype}")
    elements = 1
    for d in shape:
        if d < 1:
            raise _Invalid(f"tensor {name!r} has shape {shape}; every dimension must be >= 1")
        elements *= d
    if elements > MAX_ELEMENTS:
        raise _Invalid(f"tensor {name!r} has shape {shape} ({elements} elements, more than "
                       f"{MAX_ELEMENTS})")
    index = reader.scalar(tensor, 2, "<I")
    data = reader.buffer_bytes(buffers[index]) if 0 < index < len(buffers) else b""
    if data:
        expected = elements * _TFLITE_TYPES[ttype][1]
        if len(data) != expected:
            raise _Invalid(f"tensor {name!r}: its constant buffer has {len(data)} bytes, shape "
                           f"{shape} of {_TFLITE_TYPES[ttype][0]} needs {expected}")
    _check_quant(reader, tensor, name, ttype, shape)
    return name, shape, ttype, bool(data)


def _check_operator(reader: _Reader, op: int, n: int, code: int,
                    tensors: list[tuple[str, list[int], int, bool]]) -> None:
    if code not in _OPTIONS:
        return
    op_name, fields = _OPTIONS[code]
    pos = reader.field(op, 4)
    if pos is None:
        raise _Invalid(f"operator {n} ({op_name}) has no options")
    table = reader.table(reader.deref(pos))
    values = {k: reader.scalar(table, i, fmt, default) for k, (i, fmt, default) in fields.items()}
    for key in _AT_LEAST_ONE:
        if key in values and values[key] < 1:
            raise _Invalid(f"operator {n} ({op_name}) has {key} {values[key]}; it must be >= 1")
    if values["padding"] not in (0, 1):
        raise _Invalid(f"operator {n} ({op_name}) has padding {values['padding']} "
                       "(SAME 0 or VALID 1)")
    if not 0 <= values["fused_activation_function"] <= 5:
        raise _Invalid(f"operator {n} ({op_name}) has fused activation "
                       f"{values['fused_activation_function']}")
    inputs = reader.int_vector(op, 1)
    if code in (_CONV_2D, _DEPTHWISE_CONV_2D) and len(inputs) >= 2 \
            and inputs[0] >= 0 and inputs[1] >= 0:
        x_shape, w_shape = tensors[inputs[0]][1], tensors[inputs[1]][1]
        if len(w_shape) != 4 or len(x_shape) != 4:
            raise _Invalid(f"operator {n} ({op_name}) needs 4-D input and filter, got "
                           f"{x_shape} and {w_shape}")
        if code == _CONV_2D and x_shape[3] % w_shape[3]:
            raise _Invalid(f"operator {n} (CONV_2D): input channels {x_shape[3]} do not fit "
                           f"filter {w_shape}")
        if code == _DEPTHWISE_CONV_2D:
            multiplier = values["depth_multiplier"]
            if multiplier < 0 or (multiplier and x_shape[3] * multiplier != w_shape[3]):
                raise _Invalid(f"operator {n} (DEPTHWISE_CONV_2D) has depth_multiplier "
                               f"{multiplier}: {x_shape[3]} input channels x {multiplier} != "
                               f"{w_shape[3]} filter channels")


def check_tflite(data: bytes, path: Path | str = "<bytes>") -> None:
    """Raise `EdgecnnError` naming `path` unless the .tflite is structurally sound (see module)."""
    verify_tflite(data, path)
    reader = _Reader(data)
    try:
        root = reader.table(reader.deref(0))
        codes = []
        for opcode in reader.tables(root, 1):
            deprecated = reader.scalar(opcode, 0, "<b")
            codes.append(max(deprecated, reader.scalar(opcode, 3, "<i")))
        buffers = reader.tables(root, 4)
        for subgraph in reader.tables(root, 2):
            tensors = [_tensor_facts(reader, t, buffers) for t in reader.tables(subgraph, 0)]
            inputs = reader.int_vector(subgraph, 1)
            if not inputs or not reader.int_vector(subgraph, 2):
                raise _Invalid("the model has no input or no output")
            for i in inputs:
                if tensors[i][3]:
                    raise _Invalid(f"input tensor {tensors[i][0]!r} has a constant buffer")
            for n, op in enumerate(reader.tables(subgraph, 3)):
                _check_operator(reader, op, n, codes[reader.scalar(op, 0, "<I")], tensors)
    except _Corrupt as exc:
        raise EdgecnnError(f"{path}: corrupt or truncated TFLite model ({exc})") from None
    except _Invalid as exc:
        raise EdgecnnError(f"{path}: invalid TFLite model: {exc}") from None
    except (struct.error, IndexError) as exc:
        raise EdgecnnError(f"{path}: corrupt TFLite model ({exc})") from None


# --- ONNX ----------------------------------------------------------------------------------

_SPATIAL_OPS = {"Conv", "ConvTranspose", "AveragePool", "MaxPool", "LpPool", "ConvInteger",
                "QLinearConv"}
_QUANT_TYPES = {"int8", "uint8", "int16", "uint16", "int4", "uint4"}


def _constants(model: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    values = {}
    for init in model.graph.initializer:
        if init.data_location == 1:  # TensorProto.EXTERNAL: not loaded here
            continue
        try:
            values[init.name] = numpy_helper.to_array(init)
        except Exception as exc:  # noqa: BLE001 - a damaged tensor raises several types
            raise _Invalid(f"initializer {init.name!r} cannot be read ({exc})") from None
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    try:
                        values[node.output[0]] = numpy_helper.to_array(attr.t)
                    except Exception as exc:  # noqa: BLE001
                        raise _Invalid(f"Constant {node.name or node.output[0]!r} cannot be "
                                       f"read ({exc})") from None
    return values


def _check_onnx_node(node: Any, values: dict[str, Any]) -> None:
    import numpy as np

    label = f"node {node.name or node.output[0] if node.output else node.op_type!r} " \
            f"({node.op_type})"
    if node.op_type in _SPATIAL_OPS:
        for attr in node.attribute:
            ints = list(attr.ints)
            if attr.name in ("strides", "dilations", "kernel_shape") and any(v < 1 for v in ints):
                raise _Invalid(f"{label} has {attr.name} {ints}; they must be >= 1")
            if attr.name == "pads" and any(v < 0 for v in ints):
                raise _Invalid(f"{label} has pads {ints}; they must be >= 0")
            if attr.name == "group" and attr.i < 1:
                raise _Invalid(f"{label} has group {attr.i}; it must be >= 1")
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        scale = values.get(node.input[1]) if len(node.input) > 1 else None
        if scale is not None:
            s = np.asarray(scale, np.float64)
            if s.size == 0 or not np.isfinite(s).all() or (s <= 0).any():
                bad = s.reshape(-1)[~(np.isfinite(s.reshape(-1)) & (s.reshape(-1) > 0))][:1]
                raise _Invalid(f"{label} has scale {bad.tolist() or '[]'} in {node.input[1]!r}; "
                               "scales must be finite and > 0")
        zero_point = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero_point is not None:
            dtype = np.asarray(zero_point).dtype.name
            if node.op_type == "QuantizeLinear" and dtype not in _QUANT_TYPES:
                raise _Invalid(f"{label} has a {dtype} zero point {node.input[2]!r}; "
                               f"QuantizeLinear takes {', '.join(sorted(_QUANT_TYPES))}")
            if scale is not None and np.size(zero_point) not in (1, np.size(scale)):
                raise _Invalid(f"{label}: {np.size(scale)} scales but {np.size(zero_point)} "
                               "zero points")


def check_onnx(model: Any, where: str) -> None:
    """Raise `EdgecnnError` unless the ONNX ModelProto is structurally sound (see module)."""
    try:
        graph = model.graph
        if not graph.node:
            raise _Invalid("the graph has no nodes")
        if not graph.input or not graph.output:
            raise _Invalid("the graph has no input or no output")
        produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} \
            | {i.name for i in graph.initializer}
        for output in graph.output:
            if output.name not in produced:
                raise _Invalid(f"graph output {output.name!r} is produced by no node")
        initializers = {i.name for i in graph.initializer}
        for value in graph.input:
            if value.name in initializers:
                continue
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField(
                "dim_value")]
            if any(d < 1 or d > MAX_INPUT_DIM for d in dims):
                raise _Invalid(f"input {value.name!r} has dimensions {dims}; each must be in "
                               f"1..{MAX_INPUT_DIM}")
        for init in graph.initializer:
            count = 1
            for d in init.dims:
                if d < 0:
                    raise _Invalid(f"initializer {init.name!r} has dimensions {list(init.dims)}")
                count *= d
            if count > MAX_ELEMENTS:
                raise _Invalid(f"initializer {init.name!r} has {count} elements, more than "
                               f"{MAX_ELEMENTS}")
        values = _constants(model)
        for node in graph.node:
            _check_onnx_node(node, values)
    except _Invalid as exc:
        raise EdgecnnError(f"{where}: invalid ONNX model: {exc}") from None


def check_file(path: Path) -> None:
    """The structural check for an artifact file by suffix (.tflite; .onnx when `onnx` is
    installed). Raises `EdgecnnError` naming the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        data = path.read_bytes()
        check_identifier(data, path)
        check_tflite(data, path)
    elif suffix == ".onnx":
        try:
            import onnx
        except ImportError:
            return
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors have several types
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() \
                else type(exc).__name__
            raise EdgecnnError(f"{path}: not a loadable ONNX model ({first})") from None
        if not model.HasField("graph") or not model.graph.node:
            raise EdgecnnError(f"{path}: not a loadable ONNX model (no graph nodes: empty, "
                               "truncated or not an ONNX file)")
        check_onnx(model, str(path))
