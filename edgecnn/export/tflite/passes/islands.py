"""Ops a QDQ model leaves in float run in float: DEQUANTIZE before, QUANTIZE after.

onnxruntime's quantize_static, for one, leaves ops it has no QDQ rule for
(HardSwish, ReduceMean, ...) between a DequantizeLinear and the next
QuantizeLinear. Converting them faithfully keeps the model's numbers; the
conversion notes name them, so a user who wants a full-int8 file can quantize them.
"""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Graph, Op

FLOAT_OPS = ("run in float (DEQUANTIZE / QUANTIZE around them) because the QDQ model leaves "
             "their tensors unquantized; quantize them too for a full-int8 model")


def is_int8_op(graph: Graph, op: Op) -> bool:
    """True when every activation the op reads or writes is an int8 tensor."""
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
    for op in graph.ops:
        if is_int8_op(graph, op) or op.type in ("QUANTIZE", "DEQUANTIZE"):
            ops.append(op)
            continue
        if quantized:
            graph.note(FLOAT_OPS, f"{op.name} ({op.type})")
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
