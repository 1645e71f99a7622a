"""Conv1d: sequences [N, C, L] become images [N, C, 1, L] around 1-D convolutions.

TFLite has no 1-D convolution. `lift_conv1d` rewrites the region of rank-3 tensors a
Conv1d reads and writes (and the elementwise ops, slices, pads, concats and means on
them, as in a TCN: dilated causal Conv1d, the right-side chomp, a residual add) into
rank 4 with a height of 1, so each Conv1d is a 2-D convolution (CONV_2D, or
DEPTHWISE_CONV_2D when depthwise) with a 1 x K kernel, and the region's tensors are
stored NHWC ([N, 1, L, C]) like any image. Where the region meets rank 3 (the model
input, an op it does not lift), an Unsqueeze / Squeeze on axis 2 converts; a
single-channel input needs no TRANSPOSE there.
"""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Graph, Op

#: ops applied position by position, with no axis attributes
POINTWISE = ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSwish", "HardSigmoid",
             "Gelu", "BatchNormalization", "Identity", "Add", "Sub", "Mul", "Div", "PRelu")
LIFTED = (*POINTWISE, "Conv", "Slice", "Pad", "Concat", "ReduceMean")
SEQUENCE_AXIS = {0: 0, 1: 1, 2: 3}  # [N, C, L] axis -> [N, C, 1, L] axis


def _activations(graph: Graph, names: list[str]) -> list[str]:
    return [n for n in names if n and not graph.tensor(n).is_const]


def _liftable(graph: Graph, op: Op) -> bool:
    if op.type not in LIFTED or op.domain != "onnx":
        return False
    inputs = _activations(graph, op.inputs)
    if not inputs or any(graph.tensor(n).rank != 3 for n in inputs):
        return False
    if op.type == "ReduceMean":
        axes = _reduce_axes(graph, op)
        return axes is not None and 2 in axes
    return all(graph.tensor(n).rank == 3 for n in op.outputs)


def _reduce_axes(graph: Graph, op: Op) -> list[int] | None:
    axes = op.attrs.get("axes")
    if len(op.inputs) > 1 and op.inputs[1]:
        axes = graph.const(op.inputs[1])
        if axes is None:
            return None
    return [0, 1, 2] if axes is None or len(axes) == 0 else sorted(int(a) % 3 for a in axes)


def _region(graph: Graph) -> list[Op]:
    """The liftable ops connected through rank-3 tensors to a Conv1d."""
    producers, consumers = graph.producers(), graph.consumers()
    seeds = [op for op in graph.ops if op.type == "Conv" and _liftable(graph, op)]
    region: dict[int, Op] = {id(op): op for op in seeds}
    stack = list(seeds)
    while stack:
        op = stack.pop()
        for name in _activations(graph, [*op.inputs, *op.outputs]):
            if graph.tensor(name).rank != 3:
                continue
            neighbours = [producers.get(name), *consumers.get(name, [])]
            for other in neighbours:
                if other is not None and id(other) not in region and _liftable(graph, other):
                    region[id(other)] = other
                    stack.append(other)
    return [op for op in graph.ops if id(op) in region]


def _const_axes(graph: Graph, op: Op, index: int, values: list[int]) -> None:
    name = graph.add_const(f"{op.name}_axes_2d", np.asarray(values, np.int64))
    op.inputs = list(op.inputs) + [""] * (index + 1 - len(op.inputs))
    op.inputs[index] = name


def _rewrite(graph: Graph, op: Op) -> None:
    """`op`'s attributes and constants for [N, C, 1, L] instead of [N, C, L] (in place)."""
    if op.type == "Conv":
        w = graph.tensor(op.inputs[1])
        if w.is_const and w.rank == 3:
            o, i, k = w.shape
            op.inputs[1] = graph.add_const(f"{w.name}_2d", w.data.reshape(o, i, 1, k),
                                           quant=w.quant)
        for key, unit in (("kernel_shape", 1), ("strides", 1), ("dilations", 1)):
            if key in op.attrs:
                op.attrs[key] = [unit, *op.attrs[key]]
        if "pads" in op.attrs:
            begin, end = op.attrs["pads"]
            op.attrs["pads"] = [0, begin, 0, end]
    elif op.type == "Slice":
        starts = graph.const(op.inputs[1])
        axes = graph.const(op.inputs[3]) if len(op.inputs) > 3 and op.inputs[3] else None
        axes = range(len(starts)) if axes is None else axes
        _const_axes(graph, op, 3, [SEQUENCE_AXIS[int(a) % 3] for a in axes])
    elif op.type == "Concat":
        op.attrs["axis"] = SEQUENCE_AXIS[op.attrs.get("axis", 1) % 3]
    elif op.type == "Pad":
        pads = graph.const(op.inputs[1]).reshape(-1).astype(np.int64)
        axes = graph.const(op.inputs[3]) if len(op.inputs) > 3 and op.inputs[3] else None
        axes = list(range(3)) if axes is None else [int(a) % 3 for a in axes]
        full = np.zeros(8, np.int64)
        for j, axis in enumerate(axes):
            full[SEQUENCE_AXIS[axis]] = pads[j]
            full[SEQUENCE_AXIS[axis] + 4] = pads[j + len(axes)]
        op.inputs[1] = graph.add_const(f"{op.name}_pads_2d", full)
        if len(op.inputs) > 3:
            op.inputs[3] = ""
    elif op.type == "ReduceMean":  # the unit axis goes with the sequence axis
        axes = [SEQUENCE_AXIS[a] for a in _reduce_axes(graph, op)] + [2]
        if "axes" in op.attrs:
            op.attrs["axes"] = sorted(axes)
        else:
            _const_axes(graph, op, 1, sorted(axes))
    else:  # pointwise: constants broadcast against [.., C, L] get the unit axis
        for i, name in enumerate(op.inputs):
            tensor = graph.tensor(name) if name else None
            if tensor is not None and tensor.is_const and tensor.rank >= 2 \
                    and op.type != "BatchNormalization":
                shape = (*tensor.shape[:-1], 1, tensor.shape[-1])
                op.inputs[i] = graph.add_const(f"{name}_2d", tensor.data.reshape(shape),
                                               quant=tensor.quant)


def lift_conv1d(graph: Graph) -> None:
    """Rank-3 regions around Conv1d become rank 4 with height 1 (see the module doc).
    In place; Unsqueeze / Squeeze ops join the region to the rest of the graph."""
    region = _region(graph)
    if not region:
        return
    inside = {id(op) for op in region}
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    lifted: dict[str, str] = {}

    def lift(name: str) -> str:
        if name not in lifted:
            t = graph.tensor(name)
            n, c, length = t.shape
            lifted[name] = graph.add_tensor(f"{name}_2d", (n, c, 1, length), t.dtype,
                                            quant=t.quant)
        return lifted[name]

    unit_axis = graph.add_const("sequence_unit_axis", np.asarray([2], np.int64))
    ops: list[Op] = []
    for op in graph.ops:
        if id(op) not in inside:
            ops.append(op)
            continue
        for i, name in enumerate(op.inputs):
            if not name or graph.tensor(name).is_const or graph.tensor(name).rank != 3:
                continue
            if name not in lifted:
                producer = producers.get(name)
                if producer is None or id(producer) not in inside:
                    ops.append(Op("Unsqueeze", [name, unit_axis], [lift(name)],
                                  name=f"{op.name}_to_2d"))
            op.inputs[i] = lift(name)
        _rewrite(graph, op)
        ops.append(op)
        for i, name in enumerate(op.outputs):
            if graph.tensor(name).rank != 3:
                continue  # a mean that drops the sequence axis leaves the region
            op.outputs[i] = lift(name)
            readers = consumers.get(name, [])
            if name in outputs or any(id(r) not in inside for r in readers):
                ops.append(Op("Squeeze", [lift(name), unit_axis], [name],
                              name=f"{op.name}_to_1d"))
    graph.ops = ops
