"""Serialize a lowered graph as a TFLite flatbuffer (schema object API, file id TFL3).

One subgraph, one buffer per constant (buffer 0 is the empty sentinel every
activation points at), one operator code per (builtin, version), a
`serving_default` signature keyed by the ONNX input and output names, and
named metadata buffers.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgecnn.errors import EdgecnnError
from edgecnn.export.tflite.builtins import BUILTINS, op_version
from edgecnn.export.tflite.graph import Graph, Op, Tensor

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
ALIGNMENT = 16  # constant data aligned like the TFLite converter does
TENSOR_TYPES = {
    np.dtype(np.float32): schema.TensorType.FLOAT32,
    np.dtype(np.int32): schema.TensorType.INT32,
    np.dtype(np.int8): schema.TensorType.INT8,
    np.dtype(np.int16): schema.TensorType.INT16,
    np.dtype(np.uint8): schema.TensorType.UINT8,
    np.dtype(np.int64): schema.TensorType.INT64,
}
# option -> enum class its string values name
ENUMS = {"padding": schema.Padding, "fused_activation_function": schema.ActivationFunctionType}


class _AlignedBuffer(schema.BufferT):
    """A buffer whose bytes start on a 16-byte boundary."""

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (object API name)
        data = None
        if self.data is not None:
            raw = self.data.tobytes()
            builder.StartVector(1, len(raw), ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _options(op: Op) -> tuple[int, object | None]:
    if op.type not in BUILTINS:
        raise EdgecnnError(f"{op.describe()}: {op.type} has no builtin record (builtins.py)")
    table = BUILTINS.get(op.type).options
    if not table:
        return schema.BuiltinOptions.NONE, None
    options = getattr(schema, f"{table}T")()
    for key, value in op.attrs.items():
        field = _camel(key)
        if not hasattr(options, field):
            raise EdgecnnError(f"{op.describe()}: {op.type} has no option {key!r}")
        if key in ENUMS:
            value = getattr(ENUMS[key], value)
        setattr(options, field, value)
    return getattr(schema.BuiltinOptions, table), options


def _quantization(tensor: Tensor) -> schema.QuantizationParametersT | None:
    if tensor.quant is None:
        return None
    params = schema.QuantizationParametersT()
    params.scale = [float(s) for s in tensor.quant.scale]
    params.zeroPoint = [int(z) for z in tensor.quant.zero_point]
    params.quantizedDimension = tensor.quant.axis or 0
    return params


def _tensor(tensor: Tensor, buffer: int) -> schema.TensorT:
    if tensor.dtype not in TENSOR_TYPES:
        raise EdgecnnError(f"tensor {tensor.name!r}: dtype {tensor.dtype} has no TFLite type")
    out = schema.TensorT()
    out.shape = list(tensor.shape)
    out.type = TENSOR_TYPES[tensor.dtype]
    out.buffer = buffer
    out.name = tensor.name
    out.quantization = _quantization(tensor)
    return out


def _signature(graph: Graph, index: dict[str, int]) -> schema.SignatureDefT:
    def maps(names: list[str], keys: list[str]) -> list[schema.TensorMapT]:
        result = []
        for name, key in zip(names, keys, strict=True):
            entry = schema.TensorMapT()
            entry.name, entry.tensorIndex = key, index[name]
            result.append(entry)
        return result

    signature = schema.SignatureDefT()
    signature.inputs = maps(graph.inputs, graph.input_keys)
    signature.outputs = maps(graph.outputs, graph.output_keys)
    signature.signatureKey = "serving_default"
    signature.subgraphIndex = 0
    return signature


def write_model(graph: Graph, metadata: dict[str, bytes] | None = None) -> bytes:
    """The flatbuffer bytes of `graph` (already lowered), with named metadata buffers."""
    buffers: list[schema.BufferT] = [_AlignedBuffer()]
    names = list(dict.fromkeys([*graph.inputs, *(n for op in graph.ops
                                                  for n in (*op.inputs, *op.outputs) if n),
                                *graph.outputs]))
    index = {name: i for i, name in enumerate(names)}
    tensors = []
    for name in names:
        tensor = graph.tensor(name)
        buffer = 0
        if tensor.is_const:
            buffers.append(_AlignedBuffer())
            buffers[-1].data = np.ascontiguousarray(tensor.data, dtype=tensor.dtype)
            buffer = len(buffers) - 1
        tensors.append(_tensor(tensor, buffer))

    codes: dict[tuple[int, int], int] = {}
    operators = []
    for op in graph.ops:
        builtin = getattr(schema.BuiltinOperator, op.type)
        key = (builtin, op_version(graph, op))
        if key not in codes:
            codes[key] = len(codes)
        operator = schema.OperatorT()
        operator.opcodeIndex = codes[key]
        operator.inputs = [index[n] if n else -1 for n in op.inputs]
        operator.outputs = [index[n] for n in op.outputs]
        operator.builtinOptionsType, operator.builtinOptions = _options(op)
        operators.append(operator)

    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.operators = tensors, operators
    subgraph.inputs = [index[n] for n in graph.inputs]
    subgraph.outputs = [index[n] for n in graph.outputs]
    subgraph.name = "main"

    model = schema.ModelT()
    model.version = SCHEMA_VERSION
    model.description = "edgecnn"
    model.operatorCodes = []
    for (builtin, version) in codes:
        code = schema.OperatorCodeT()
        code.builtinCode, code.version = builtin, version
        code.deprecatedBuiltinCode = min(
            builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        model.operatorCodes.append(code)
    model.subgraphs = [subgraph]
    model.signatureDefs = [_signature(graph, index)]
    model.metadata = []
    for name, payload in (metadata or {}).items():
        buffers.append(_AlignedBuffer())
        buffers[-1].data = np.frombuffer(payload, np.uint8)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(buffers) - 1
        model.metadata.append(entry)
    model.buffers = buffers

    size = sum(b.data.nbytes for b in buffers if b.data is not None)
    builder = flatbuffers.Builder(size + 1024 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
