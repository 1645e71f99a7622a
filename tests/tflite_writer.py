"""A test-only .tflite writer: RESHAPE + FULLY_CONNECTED, float or full int8.

Stands in for `edgecnn.export.tflite` in the runtime tests. Uses the object
API of `ai_edge_litert.schema_py_generated` and the `flatbuffers` Builder,
and embeds the "edgecnn" metadata entry the way the real exporter does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tiny_models import LinearClassifier, affine_quant, metadata_json

from edgecnn.config import QuantParams


def _quant(schema, params: QuantParams | None):
    if params is None:
        return None
    q = schema.QuantizationParametersT()
    q.scale, q.zeroPoint = [float(params.scale)], [int(params.zero_point)]
    return q


def _tensor(schema, name: str, shape, ttype: int, buffer: int, quant=None, signature=None):
    t = schema.TensorT()
    t.name, t.shape, t.type, t.buffer, t.quantization = name, list(shape), ttype, buffer, quant
    if signature is not None:
        t.shapeSignature = list(signature)
    return t


def _buffer(schema, data: bytes | None = None):
    b = schema.BufferT()
    b.data = list(data) if data else None
    return b


def write_tflite(model: LinearClassifier, path: Path, *, int8: bool = False,
                 dynamic_batch: bool = False, metadata: bool = True) -> Path:
    """Write the classifier as a .tflite: (N,8,8,1) -> RESHAPE (N,64) -> FC -> (N,classes).

    `dynamic_batch` writes shape_signature -1 and a RESHAPE to (-1, 64); otherwise the
    batch is fixed at 1 (RESHAPE to (1, 64)), as many converters emit.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    classes, features = model.weights.shape
    in_q = out_q = w_q = None
    weights, bias = model.weights.astype(np.float32), model.bias.astype(np.float32)
    ftype = schema.TensorType.FLOAT32
    if int8:
        in_q, out_q = affine_quant(*model.feature_range), affine_quant(*model.logit_range)
        w_q = QuantParams(float(np.abs(weights).max()) / 127.0, 0)
        weights = np.clip(np.round(weights / w_q.scale), -127, 127).astype(np.int8)
        bias = np.round(bias / (in_q.scale * w_q.scale)).astype(np.int32)
        ftype = schema.TensorType.INT8
    bias_q = QuantParams(in_q.scale * w_q.scale, 0) if int8 else None
    sig = [-1, 8, 8, 1] if dynamic_batch else None
    new_shape = np.array([-1 if dynamic_batch else 1, features], np.int32)

    buffers = [_buffer(schema), _buffer(schema, new_shape.tobytes()),
               _buffer(schema, weights.tobytes()), _buffer(schema, bias.tobytes())]
    tensors = [
        _tensor(schema, "input", [1, 8, 8, 1], ftype, 0, _quant(schema, in_q), sig),
        _tensor(schema, "new_shape", [2], schema.TensorType.INT32, 1),
        _tensor(schema, "flat", [1, features], ftype, 0, _quant(schema, in_q),
                [-1, features] if dynamic_batch else None),
        _tensor(schema, "weights", [classes, features], ftype, 2, _quant(schema, w_q)),
        _tensor(schema, "bias", [classes],
                schema.TensorType.INT32 if int8 else schema.TensorType.FLOAT32, 3,
                _quant(schema, bias_q)),
        _tensor(schema, "logits", [1, classes], ftype, 0, _quant(schema, out_q),
                [-1, classes] if dynamic_batch else None),
    ]
    codes = []
    for code in (schema.BuiltinOperator.RESHAPE, schema.BuiltinOperator.FULLY_CONNECTED):
        c = schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, code, 1
        codes.append(c)
    reshape, fc = schema.OperatorT(), schema.OperatorT()
    reshape.opcodeIndex, reshape.inputs, reshape.outputs = 0, [0, 1], [2]
    reshape.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
    reshape.builtinOptions = schema.ReshapeOptionsT()
    reshape.builtinOptions.newShape = [int(v) for v in new_shape]
    fc.opcodeIndex, fc.inputs, fc.outputs = 1, [2, 3, 4], [5]
    fc.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    fc.builtinOptions = schema.FullyConnectedOptionsT()

    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs = tensors, [0], [5]
    subgraph.operators, subgraph.name = [reshape, fc], "main"
    proto = schema.ModelT()
    proto.version, proto.operatorCodes, proto.subgraphs = 3, codes, [subgraph]
    proto.description, proto.buffers = "edgecnn test classifier", buffers
    if metadata:
        text = metadata_json(model, "NHWC", "int8" if int8 else "fp32", in_q, out_q)
        proto.buffers.append(_buffer(schema, text.encode("utf-8")))
        entry = schema.MetadataT()
        entry.name, entry.buffer = "edgecnn", len(proto.buffers) - 1
        proto.metadata = [entry]
    builder = flatbuffers.Builder(4096)
    builder.Finish(proto.Pack(builder), file_identifier=b"TFL3")
    Path(path).write_bytes(bytes(builder.Output()))
    return Path(path)


def int8_reference_logits(model: LinearClassifier, images: np.ndarray) -> np.ndarray:
    """What the int8 .tflite computes, in integer numpy: the parity target (1 output step)."""
    from edgecnn.preprocess import prepare

    in_q, out_q = affine_quant(*model.feature_range), affine_quant(*model.logit_range)
    w_scale = float(np.abs(model.weights).max()) / 127.0
    w = np.clip(np.round(model.weights / w_scale), -127, 127).astype(np.int64)
    bias = np.round(model.bias / (in_q.scale * w_scale)).astype(np.int64)
    x = prepare(images, model.record).reshape(len(images), -1)
    q_in = np.clip(np.round(x / in_q.scale) + in_q.zero_point, -128, 127).astype(np.int64)
    acc = (q_in - in_q.zero_point) @ w.T + bias
    q_out = np.clip(np.round(acc * (in_q.scale * w_scale / out_q.scale)) + out_q.zero_point,
                    -128, 127)
    return (out_q.scale * (q_out - out_q.zero_point)).astype(np.float32)
