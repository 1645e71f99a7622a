"""Ops a QDQ model leaves in float run in float: DEQUANTIZE before, QUANTIZE after.

onnxruntime's quantize_static, for one, leaves ops it has no QDQ rule for
(HardSwish, ReduceMean, ...) between a DequantizeLinear and the next
QuantizeLinear. Converting them faithfully keeps the model's numbers; the
conversion notes name them, so a user who wants a full-int8 file can quantize them.
"""

from __future__ import annotations

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.export.tflite.builtins import record
from edgecnn.export.tflite.graph import Graph, Op

FLOAT_OPS = ("run in float (DEQUANTIZE / QUANTIZE around them) because the QDQ model leaves "
             "their tensors unquantized or their builtin has no int8 kernel (float islands)")
FLOAT_LAYERS = ("run in float (DEQUANTIZE / QUANTIZE around them): float layers of the QDQ "
                "model (edgecnn --keep-float)")
#: the key of the edgecnn record's `extra` that declares a QDQ model's float weights intended
FLOAT_WEIGHTS_KEY = "float_weights"


def declares_float_layers(graph: Graph) -> bool:
    """True when the model's edgecnn record says its float weights are float layers by
    design (`extra.float_weights == "float"`, written by `export.onnx.export_qdq`). Other
    QDQ files keep the default: float weights of an int8 op are quantized, with a note."""
    from edgecnn.config import METADATA_KEY, loads

    try:  # the record's own reader: size and nesting bounded (a damaged file is not a crash)
        extra = loads(graph.metadata.get(METADATA_KEY, "{}"), "the record").get("extra", {})
    except (EdgecnnError, ValueError, AttributeError):
        return False
    return isinstance(extra, dict) and extra.get(FLOAT_WEIGHTS_KEY) == "float"


def mark_float_layers(graph: Graph) -> None:
    """A weighted op (conv, fully connected) whose weights the QDQ model leaves float runs
    in float when the model declares it (`declares_float_layers`), as onnxruntime runs
    it: `isolate_float_ops` then puts a DEQUANTIZE before it and a QUANTIZE after it
    even where the tensors around it are int8. In place (`graph.float_ops`)."""
    if not graph.quantized or not declares_float_layers(graph):
        return
    for op in graph.ops:
        rec = record(op)
        if rec is None or rec.weights is None or len(op.inputs) <= rec.weights[0]:
            continue
        weights = graph.tensors.get(op.inputs[rec.weights[0]])
        if weights is not None and weights.is_const and weights.quant is None:
            graph.float_ops.add(id(op))


def is_int8_op(graph: Graph, op: Op) -> bool:
    """True when every activation the op reads or writes is an int8 tensor, the op is not
    one of the model's float layers (`mark_float_layers`), and its builtin has an int8
    kernel (a record whose int8 contract is "float" has none: SQRT, DIV)."""
    rec = record(op)
    if id(op) in graph.float_ops or (rec is not None and rec.int8 == "float"):
        return False
    names = [n for n in (*op.inputs, *op.outputs) if n and not graph.tensor(n).is_const]
    return all(graph.tensor(n).quant is not None for n in names)


def isolate_float_ops(graph: Graph) -> None:
    """In place: an op with an unquantized activation reads DEQUANTIZEd inputs (and
    float constants) and writes float outputs that a QUANTIZE turns back into the
    int8 tensors its readers expect. In a float graph this only dequantizes
    weights a QDQ model quantized alone (weight-only quantization)."""
    quantized = graph.quantized
    ops: list[Op] = []
    dequantized: dict[str, str] = {}
    islands: dict[tuple[str, str], list[str]] = {}  # (note, ONNX node) -> its float builtins
    for op in graph.ops:
        if is_int8_op(graph, op) or op.type in ("QUANTIZE", "DEQUANTIZE"):
            ops.append(op)
            continue
        if quantized:
            kind = FLOAT_LAYERS if id(op) in graph.float_ops else FLOAT_OPS
            islands.setdefault((kind, op.name), []).append(op.type)
        for i, name in enumerate(op.inputs):
            tensor = graph.tensor(name) if name else None
            if tensor is None or tensor.quant is None:
                continue
            if tensor.is_const:
                values = tensor.quant.dequantize(tensor.data).astype(np.float32)
                op.inputs[i] = graph.add_const(f"{name}_float", values)
                continue
            if name not in dequantized:
                dequantized[name] = graph.add_tensor(f"{name}_float", tensor.shape, np.float32)
                ops.append(Op("DEQUANTIZE", [name], [dequantized[name]], name=op.name,
                              domain="tflite"))
            op.inputs[i] = dequantized[name]
        requantize = []
        for i, name in enumerate(op.outputs):
            tensor = graph.tensor(name)
            if tensor.quant is not None:
                op.outputs[i] = graph.add_tensor(f"{name}_float", tensor.shape, np.float32)
                requantize.append(Op("QUANTIZE", [op.outputs[i]], [name], name=op.name,
                                     domain="tflite"))
        ops.append(op)
        ops.extend(requantize)
    graph.ops = ops
    for (kind, name), types in islands.items():  # one note per ONNX node (a LayerNorm: 9 ops)
        graph.note(kind, f"{name} ({', '.join(types)})")
