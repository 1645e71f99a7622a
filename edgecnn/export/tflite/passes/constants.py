"""Constant folding and removal of ops that do nothing at inference."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgecnn.errors import EdgecnnError
from edgecnn.export.tflite.graph import Graph, Op, Quant

# DequantizeLinear of a constant stays: fold_qdq turns it into int8 weights.
NOT_FOLDED = frozenset({"DequantizeLinear"})
IDENTITIES = frozenset({"Identity", "Dropout"})


def _evaluate(op: Op, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
             for k, v in op.attrs.items()}
    node = helper.make_node(op.type, op.inputs, op.outputs, **attrs)
    try:
        return ReferenceEvaluator(node).run(None, feeds)
    except Exception as exc:  # the reference runtime raises many types
        raise EdgecnnError(f"{op.describe()}: folding its constant inputs failed: {exc}") \
            from None


def fold_constants(graph: Graph) -> None:
    """Replace ops whose inputs are all constant (and Shape of static shapes) by constants.

    Rewrites `graph` in place: folded ops are removed, their outputs become
    constant tensors.
    """
    kept: list[Op] = []
    for op in graph.ops:
        if op.type == "Shape" and graph.const(op.inputs[0]) is None:
            shape = np.asarray(graph.tensor(op.inputs[0]).shape, np.int64)
            start, end = op.attrs.get("start", 0), op.attrs.get("end", None)
            results = [shape[start:end]]
        elif (op.type not in NOT_FOLDED and op.inputs
              and all(not name or graph.const(name) is not None for name in op.inputs)):
            results = _evaluate(op, {n: graph.const(n) for n in op.inputs if n})
        else:
            kept.append(op)
            continue
        for name, value in zip(op.outputs, results, strict=False):
            value = np.asarray(value)
            graph.tensors[name].data = value
            graph.tensors[name].shape = value.shape
            graph.tensors[name].dtype = value.dtype
    graph.ops = kept


def remove_identities(graph: Graph) -> None:
    """Drop Identity and inference-mode Dropout, reading their input instead (in place)."""
    kept: list[Op] = []
    for op in graph.ops:
        if op.type in IDENTITIES and len(op.inputs) >= 1:
            if op.type == "Dropout" and len(op.inputs) > 2 and op.inputs[2]:
                training = graph.const(op.inputs[2])
                if training is None or bool(training):
                    raise EdgecnnError(f"{op.describe()}: training-mode Dropout is not "
                                       f"supported; export the model in eval mode")
            graph.replace_uses(op.outputs[0], op.inputs[0])
            continue
        kept.append(op)
    graph.ops = kept


def fold_weight_transposes(graph: Graph) -> None:
    """A Transpose of a quantized constant (torch.onnx writes a Linear on a rank-3 input as
    MatMul(x, Transpose(DequantizeLinear(W)))) becomes the transposed constant, its
    per-channel axis moved with it, so the MatMul sees constant weights. In place; after
    `fold_qdq`, which makes DequantizeLinear(W) a quantized constant."""
    kept: list[Op] = []
    for op in graph.ops:
        source = graph.tensor(op.inputs[0]) if op.inputs else None
        if op.type != "Transpose" or source is None or not source.is_const \
                or source.quant is None:
            kept.append(op)
            continue
        perm = list(op.attrs.get("perm", range(source.rank)[::-1]))
        quant = source.quant
        axis = None if quant.axis is None else perm.index(quant.axis % source.rank)
        target = graph.tensor(op.outputs[0])
        target.data = np.ascontiguousarray(source.data.transpose(perm))
        target.shape, target.dtype = target.data.shape, target.data.dtype
        target.quant = Quant(quant.scale, quant.zero_point, axis)
    graph.ops = kept


#: ops that broadcast their inputs (numpy rules) in their TFLite builtins
BROADCASTING = frozenset({"Add", "Sub", "Mul"})


def drop_broadcast_expands(graph: Graph) -> None:
    """An Expand (x * s.expand_as(x), squeeze-excite and ECA code) read only by Add / Sub /
    Mul, whose output shapes the unexpanded input gives too, is dropped: the readers read
    its input and broadcast it themselves. In place; after `fold_qdq`, and only where the
    Expand's input and output have the same parameters (or none). Any other Expand is
    left to its lowering, which refuses it."""
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    kept: list[Op] = []
    for op in graph.ops:
        readers = consumers.get(op.outputs[0], []) if op.type == "Expand" else []
        if readers and op.outputs[0] not in outputs and _broadcast_suffices(graph, op, readers):
            graph.replace_uses(op.outputs[0], op.inputs[0])
            continue
        kept.append(op)
    graph.ops = kept


def _broadcast_suffices(graph: Graph, expand: Op, readers: list[Op]) -> bool:
    x, y = graph.tensor(expand.inputs[0]), graph.tensor(expand.outputs[0])
    if (x.quant is None) != (y.quant is None) or (x.quant and not x.quant.same_as(y.quant)):
        return False
    for op in readers:
        if op.type not in BROADCASTING:
            return False
        shapes = [x.shape if name == expand.outputs[0] else graph.tensor(name).shape
                  for name in op.inputs]
        try:
            if tuple(np.broadcast_shapes(*shapes)) != graph.tensor(op.outputs[0]).shape:
                return False
        except ValueError:
            return False
    return True
