"""Fold QuantizeLinear / DequantizeLinear pairs into tensor quantization parameters.

After `fold_qdq` a QDQ model is a graph of ordinary ops whose activations are
int8 tensors carrying (scale, zero point), and whose weights and biases are
int8 / int32 constants carrying their (per-channel) parameters. Int16 Q/DQ (16x8
layers, symmetric, zero point 0) make int16 tensors; where one tensor is quantized
both ways, a QUANTIZE converts int16 to int8, and a DEQUANTIZE + QUANTIZE int8 to
int16 (tflite-runtime 2.14 has no int8 -> int16 QUANTIZE).
"""

from __future__ import annotations

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.export.tflite.graph import Graph, Op, Quant
from edgecnn.export.tflite.ops.base import LOWERINGS

INT8 = np.dtype(np.int8)
INT16 = np.dtype(np.int16)


def _params(graph: Graph, op: Op, rank: int) -> tuple[Quant, np.dtype]:
    """The (scale, zero point, axis) of a Q or DQ node and its integer type."""
    scale = graph.const(op.inputs[1])
    zero = graph.const(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] else None
    if scale is None or (len(op.inputs) > 2 and op.inputs[2] and zero is None):
        raise EdgecnnError(f"{op.describe()}: scale and zero point must be constants")
    if op.attrs.get("block_size"):
        raise EdgecnnError(f"{op.describe()}: blocked quantization is not supported")
    qname = op.outputs[0] if op.type == "QuantizeLinear" else op.inputs[0]
    qtype = zero.dtype if zero is not None else graph.tensor(qname).dtype
    if qtype not in (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16),
                     np.dtype(np.int32)):
        raise EdgecnnError(f"{op.describe()}: {qtype} quantization is not supported "
                           f"(int8, uint8, int16 activations of 16x8 layers and int32 bias "
                           f"are)")
    if qtype == np.int16 and zero is not None and zero.any():
        raise EdgecnnError(f"{op.describe()}: int16 quantization needs zero point 0 (TFLite's "
                           f"16x8 kernels are symmetric)")
    zero = np.zeros(1, np.int64) if zero is None else zero.astype(np.int64)
    if qtype == np.uint8:
        zero = zero - 128  # uint8 q is int8 q + 128 with the same scale
    axis = op.attrs.get("axis", 1) if np.size(scale) > 1 else None
    if axis is not None and _uniform_activation(graph, op, scale, zero):
        scale, zero, axis = np.reshape(scale, -1)[:1], zero.reshape(-1)[:1], None
    if axis is not None and axis < 0:
        axis += rank
    return Quant(scale, zero, axis), (INT8 if qtype == np.uint8 else qtype)


def _uniform_activation(graph: Graph, op: Op, scale: np.ndarray, zero: np.ndarray) -> bool:
    """A per-axis Q / DQ of an activation whose scales and zero points are all equal is
    per-tensor (edgecnn's float layers read one, `onnx_passes.float_layers_per_axis_input`)."""
    scale = np.reshape(scale, -1)
    return (not graph.tensor(op.inputs[0]).is_const and bool(np.all(scale == scale[0]))
            and bool(np.all(zero == zero.reshape(-1)[0])))


def _widest(graph: Graph) -> dict[str, Quant]:
    """Per quantized activation, the QuantizeLinear parameters with the largest scale."""
    widest: dict[str, Quant] = {}
    for op in graph.ops:
        if op.type == "QuantizeLinear" and not graph.tensor(op.inputs[0]).is_const:
            quant = _params(graph, op, graph.tensor(op.inputs[0]).rank)[0]
            known = widest.get(op.inputs[0])
            if known is None or quant.scale.max() > known.scale.max():
                widest[op.inputs[0]] = quant
    return widest


def _quantized(graph: Graph, name: str, quant: Quant, dtype: np.dtype, op: Op,
               out: list[Op], widest: dict[str, Quant]) -> str:
    """The tensor holding activation `name` quantized with `quant`.

    The tensor itself takes the widest of its quantizations; any other gets its
    own tensor and a QUANTIZE from the widest (which clips nothing the other keeps).
    """
    tensor = graph.tensor(name)
    if tensor.quant is None:
        tensor.quant, tensor.dtype = widest.get(name, quant), dtype
        graph.qdq_params[name] = Quant(tensor.quant.scale, tensor.quant.zero_point,
                                       tensor.quant.axis)
    if tensor.quant.same_as(quant):
        return name
    requant = graph.add_tensor(f"{name}_requant", tensor.shape, dtype, quant=quant)
    if dtype == INT16 and tensor.dtype != INT16:
        # int8 -> int16 through float: tflite-runtime 2.14's QUANTIZE refuses an int16
        # output for an int8 input (quantize.cc: "output->type == kTfLiteUInt8 ||
        # output->type == kTfLiteInt8"); LiteRT accepts both, int16 -> int8 runs on both
        floating = graph.add_tensor(f"{name}_float", tensor.shape, np.float32)
        out.append(Op("DEQUANTIZE", [name], [floating], name=op.name, domain="tflite"))
        name = floating
    out.append(Op("QUANTIZE", [name], [requant], name=op.name, domain="tflite"))
    return requant


def fold_qdq(graph: Graph) -> None:
    """Remove every QuantizeLinear / DequantizeLinear, moving their parameters onto tensors.

    In place: Q(x) makes `x` an int8 tensor with Q's parameters; DQ(const)
    becomes an int8/int32 constant with DQ's parameters; readers of a Q or DQ
    output read the quantized tensor instead.
    """
    kept: list[Op] = []
    widest = _widest(graph)
    for op in graph.ops:
        if op.type not in ("QuantizeLinear", "DequantizeLinear"):
            kept.append(op)
            continue
        source = graph.tensor(op.inputs[0])
        quant, dtype = _params(graph, op, source.rank)
        if op.type == "DequantizeLinear" and source.is_const:
            data = source.data
            if data.dtype == np.uint8:
                data = (data.astype(np.int16) - 128).astype(np.int8)
            target = graph.add_const(f"{op.inputs[0]}_q", data, quant=quant)
        elif source.is_const:  # Q of a constant is folded by fold_constants
            raise EdgecnnError(f"{op.describe()}: cannot fold quantization of a constant")
        else:
            target = _quantized(graph, op.inputs[0], quant, dtype, op, kept, widest)
        graph.replace_uses(op.outputs[0], target)
    graph.ops = kept


def check_qdq_params(graph: Graph) -> None:
    """Every activation of the QDQ model that survives into the .tflite keeps the scale and
    zero point the QDQ model gives it, unless a pass recorded the change (`Graph.note`).

    Raises EdgecnnError naming the tensor otherwise: a converter defect, never the user's.
    """
    for name, expected in graph.qdq_params.items():
        tensor = graph.tensors.get(name)
        if tensor is None or name in graph.changed or tensor.quant is None:
            continue
        if not tensor.quant.same_as(expected):
            raise EdgecnnError(f"converter defect: tensor {name!r} was given {tensor.quant} "
                               f"where the QDQ model has {expected}, without a note; please "
                               f"report it")


def _propagates(op: Op) -> str | None:
    """How quantization passes through `op` (its record's `propagates`)."""
    return LOWERINGS.get(op.type).propagates if op.type in LOWERINGS else None


def propagate_quant(graph: Graph) -> None:
    """Give unquantized activations next to data-movement ops their neighbour's parameters.

    onnxruntime's quantizer leaves some ops (ReduceMean -> Reshape) without a
    Q/DQ between them; a reshape is exact at any scale, so the missing side
    takes the known side's parameters. In place; only for QDQ graphs.
    """
    if not graph.quantized:
        return
    changed = True
    while changed:
        changed = False
        for op in graph.ops:
            rule = _propagates(op)
            if rule is None or not op.inputs:
                continue
            src = graph.tensor(op.inputs[0])
            if src.is_const:
                continue
            for dst in (graph.tensor(name) for name in op.outputs):  # Split: several
                if dst.quant is None and src.quant is not None:
                    dst.quant, dst.dtype = src.quant, src.dtype
                    changed = True
                elif src.quant is None and dst.quant is not None and rule == "both":
                    src.quant, src.dtype = dst.quant, dst.dtype
                    changed = True
