"""The TFLite builtins the exporter writes: options table and versions, as data.

Versions follow tensorflow/lite/tools/versioning/op_version.cc: a runtime
refuses a model that asks for a version it does not register, so each op
carries the lowest version that has the features it uses. A new builtin is
one row in `BUILTINS` (and a rule in `RULES` if a feature raises its version).
"""

from __future__ import annotations

from collections.abc import Callable

from edgecnn.errors import EdgecnnError
from edgecnn.export.tflite.graph import Graph, Op

F32, I8 = "float32", "int8"

# builtin -> (its options table in the schema, "" if none; {dtype of input 0 -> version})
BUILTINS: dict[str, tuple[str, dict[str, int]]] = {
    "CONV_2D": ("Conv2DOptions", {F32: 1, I8: 3}),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2DOptions", {F32: 1, I8: 3}),
    "FULLY_CONNECTED": ("FullyConnectedOptions", {F32: 1, I8: 4}),
    "ADD": ("AddOptions", {F32: 1, I8: 2}),
    "SUB": ("SubOptions", {F32: 1, I8: 2}),
    "MUL": ("MulOptions", {F32: 1, I8: 2}),
    "MEAN": ("ReducerOptions", {F32: 1, I8: 2}),
    "AVERAGE_POOL_2D": ("Pool2DOptions", {F32: 1, I8: 2}),
    "MAX_POOL_2D": ("Pool2DOptions", {F32: 1, I8: 2}),
    "PAD": ("PadOptions", {F32: 1, I8: 2}),
    "PADV2": ("PadV2Options", {F32: 1, I8: 2}),
    "RESHAPE": ("ReshapeOptions", {F32: 1, I8: 1}),
    "TRANSPOSE": ("TransposeOptions", {F32: 1, I8: 2}),
    "CONCATENATION": ("ConcatenationOptions", {F32: 1, I8: 2}),
    "LOGISTIC": ("", {F32: 1, I8: 2}),
    "TANH": ("", {F32: 1, I8: 2}),
    "SOFTMAX": ("SoftmaxOptions", {F32: 1, I8: 2}),
    "LOG_SOFTMAX": ("LogSoftmaxOptions", {F32: 1, I8: 2}),
    "HARD_SWISH": ("HardSwishOptions", {F32: 1, I8: 1}),
    "RELU": ("", {F32: 1, I8: 2}),
    "RELU6": ("", {F32: 1, I8: 2}),
    "RELU_N1_TO_1": ("", {F32: 1, I8: 1}),
    "QUANTIZE": ("QuantizeOptions", {F32: 1, I8: 1}),
    "DEQUANTIZE": ("DequantizeOptions", {I8: 2}),
}


def _dilated(graph: Graph, op: Op) -> bool:
    return op.attrs.get("dilation_h_factor", 1) != 1 or op.attrs.get("dilation_w_factor", 1) != 1


def _keeps_dims(graph: Graph, op: Op) -> bool:
    return bool(op.attrs.get("keep_num_dims"))


def _mul_rescale_ge_1(graph: Graph, op: Op) -> bool:
    a, b, y = (graph.tensor(n).quant for n in (*op.inputs[:2], op.outputs[0]))
    return None not in (a, b, y) and a.scale[0] * b.scale[0] / y.scale[0] >= 1.0


# (builtin, condition, version): the version rises to `version` when the condition holds.
RULES: list[tuple[str, Callable[[Graph, Op], bool], int]] = [
    ("DEPTHWISE_CONV_2D", _dilated, 2),
    ("FULLY_CONNECTED", _keeps_dims, 5),
    ("MUL", _mul_rescale_ge_1, 3),
]


def op_version(graph: Graph, op: Op) -> int:
    """The version of `op`'s operator code."""
    dtype = str(graph.tensor(op.inputs[0]).dtype)
    table = BUILTINS[op.type][1] if op.type in BUILTINS else None
    if table is None or dtype not in table:
        known = ", ".join(sorted(table)) if table else "none"
        raise EdgecnnError(f"{op.describe()}: no TFLite {op.type} kernel for {dtype} inputs "
                           f"(dtypes with a version: {known})")
    version = table[dtype]
    for builtin, condition, rule_version in RULES:
        if builtin == op.type and condition(graph, op):
            version = max(version, rule_version)
    return version
