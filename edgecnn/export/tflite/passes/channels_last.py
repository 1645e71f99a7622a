"""Channels-last regions: a permute to [N, H, W, C], per-position work, a permute back.

ConvNeXt-style code writes `x.permute(0, 2, 3, 1)`, a LayerNorm over the channels, Linear
layers on the channels-last tensor, GELU, a layer scale, then `permute(0, 3, 1, 2)`. The
converter stores rank-4 tensors NHWC already, so the permuted tensor is the stored one:
`fold_channels_last` drops both Transposes and rewrites the ops between them as what
they are on an NCHW tensor (normalize over axis 1; a 1x1 Conv for a Linear, MatMul (+ its
bias Add) or onnxsim's Reshape -> Gemm -> Reshape; constants broadcast over axis 1), so
the layout pass keeps them NHWC and no TRANSPOSE is written.
"""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Graph, Op, Quant
from edgecnn.export.tflite.layouts import TO_NCHW, nchw

TO_LAST, FROM_LAST = [0, 2, 3, 1], [0, 3, 1, 2]
#: per-position ops that read one region tensor and need no rewrite
UNARY = ("Gelu", "Relu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu")
BINARY = ("Add", "Sub", "Mul", "Div")


def _is_transpose(op: Op, perm: list[int]) -> bool:
    return op.type == "Transpose" and list(op.attrs.get("perm") or []) == perm


def _channel_const(graph: Graph, name: str) -> bool:
    """A constant that broadcasts against [N, H, W, C] along C only (or a scalar)."""
    data = graph.const(name)
    return data is not None and data.ndim <= 4 and all(d == 1 for d in data.shape[:-1])


def _region(graph: Graph, start: Op, consumers: dict[str, list[Op]]
            ) -> tuple[list[Op], list[Op], set[str]] | None:
    """The ops reachable from `start`'s output through per-position ops, the Transposes
    back that end it, and its tensors; None when anything else reads a region tensor."""
    outputs = set(graph.outputs)
    tensors, inner, exits = {start.outputs[0]}, [], []
    seen: set[int] = set()
    frontier = [start.outputs[0]]
    while frontier:
        name = frontier.pop()
        if name in outputs:
            return None
        for op in consumers.get(name, []):
            if id(op) in seen:
                continue
            seen.add(id(op))
            if _is_transpose(op, FROM_LAST):
                if op.outputs[0] in outputs and (name == start.outputs[0]
                                                 or len(consumers.get(name, [])) != 1):
                    return None  # a model output is renamed, not read through: see below
                exits.append(op)
                continue
            if op.type == "Reshape":  # a Linear as onnxsim writes it: Reshape, Gemm, Reshape
                unit = _flat_gemm(graph, op, consumers)
                if unit is None:
                    return None
                inner.extend(unit)
                seen.update(id(u) for u in unit)
                tensors.add(unit[-1].outputs[0])
                frontier.append(unit[-1].outputs[0])
                continue
            if not _per_position(graph, op):
                return None
            inner.append(op)
            for out in op.outputs:
                tensors.add(out)
                frontier.append(out)
    for op in inner:  # every activation an inner op reads is a region tensor
        read = {"MatMul": op.inputs[:1], "Gemm": [], "Reshape": []}.get(
            op.type, op.inputs)  # B: `_weights`; a `_flat_gemm` unit was checked whole
        if any(n and graph.const(n) is None and n not in tensors for n in read):
            return None
    return (inner, exits, tensors) if exits else None


def _per_position(graph: Graph, op: Op) -> bool:
    if op.type in UNARY:
        return True
    if op.type in BINARY:
        # a second activation must be a region tensor too (checked once the region is known)
        return all(graph.const(n) is None or _channel_const(graph, n) for n in op.inputs[:2])
    if op.type == "LayerNormalization":
        return op.attrs.get("axis", -1) % 4 == 3 and "axes" not in op.attrs
    if op.type == "MatMul":
        return _weights(graph, op) is not None
    return False


def _weights(graph: Graph, op: Op) -> tuple[np.ndarray, Quant | None] | None:
    """A MatMul's constant B as [Cout, Cin] with its quantization (axis 0 per channel);
    None when B is not a rank-2 constant. (torch.onnx writes a Linear on a rank-4 tensor as
    Transpose(DQ(W)) -> MatMul -> Add(bias): `fold_weight_transposes` and
    `fuse_matmul_bias` have made that MatMul(x, W^T, b) by now.)"""
    data, quant = graph.const(op.inputs[1]), graph.tensor(op.inputs[1]).quant
    if data is None or data.ndim != 2:
        return None
    if quant is not None and quant.axis is not None:
        quant = Quant(quant.scale, quant.zero_point, 1 - quant.axis)
    return np.ascontiguousarray(data.T), quant


def _flat_gemm(graph: Graph, first: Op, consumers: dict[str, list[Op]]) -> list[Op] | None:
    """Reshape [N, H, W, C] -> [N*H*W, C], Gemm with constant weights, Reshape back to
    [N, H, W, Cout]: onnxsim's form of a Linear on a channels-last tensor; None otherwise."""
    x, flat = graph.tensor(first.inputs[0]), graph.tensor(first.outputs[0])
    readers = consumers.get(first.outputs[0], [])
    gemm = readers[0] if len(readers) == 1 and readers[0].type == "Gemm" else None
    if gemm is None or x.rank != 4 or flat.shape != (int(np.prod(x.shape[:3])), x.shape[3]) \
            or gemm.attrs.get("transA", 0) or gemm.attrs.get("alpha", 1.0) != 1.0 \
            or gemm.attrs.get("beta", 1.0) != 1.0 or graph.const(gemm.inputs[1]) is None:
        return None
    readers = consumers.get(gemm.outputs[0], [])
    back = readers[0] if len(readers) == 1 and readers[0].type == "Reshape" else None
    if back is None or graph.tensor(back.outputs[0]).shape != \
            (*x.shape[:3], graph.tensor(gemm.outputs[0]).shape[1]) \
            or back.outputs[0] in graph.outputs:
        return None
    return [first, gemm, back]


def _to_axis1(graph: Graph, name: str) -> str:
    """A constant broadcast along the last axis of [N, H, W, C], made to broadcast along
    axis 1 of [N, C, H, W] (rank 4, [1, C, 1, 1])."""
    data = graph.const(name)
    if data.size == 1:
        return name
    tensor = graph.tensor(name)
    quant = tensor.quant
    if quant is not None and quant.axis is not None:
        quant = Quant(quant.scale, quant.zero_point, 1)
    full = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(TO_NCHW)
    return graph.add_const(f"{name}_axis1", full, quant=quant)


def _conv1x1(op: Op, inputs: list[str], outputs: list[str]) -> None:
    op.type, op.inputs, op.outputs = "Conv", inputs, outputs
    op.attrs = {"kernel_shape": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0],
                "dilations": [1, 1], "group": 1}


def _gemm_to_conv(graph: Graph, unit: list[Op], dropped: set[int]) -> None:
    """Reshape, Gemm (B [Cout, Cin] with transB, else [Cin, Cout]; bias C), Reshape ->
    Conv 1x1 on the rank-4 tensor."""
    first, gemm, back = unit
    name = gemm.inputs[1]
    weights, quant = graph.const(name), graph.tensor(name).quant
    if not gemm.attrs.get("transB", 0):
        weights = np.ascontiguousarray(weights.T)
        if quant is not None and quant.axis is not None:
            quant = Quant(quant.scale, quant.zero_point, 1 - quant.axis)
    conv_weights = graph.add_const(f"{name}_conv1x1", weights[:, :, None, None], quant=quant)
    _conv1x1(gemm, [first.inputs[0], conv_weights, *gemm.inputs[2:3]], list(back.outputs))
    dropped.update((id(first), id(back)))


def _matmul_to_conv(graph: Graph, op: Op) -> None:
    """MatMul(x, B [Cin, Cout]) [+ bias C, `passes.fusions.fuse_matmul_bias` folded it in from
    the Add after it] -> Conv 1x1, weights B^T [Cout, Cin, 1, 1] (`_weights`), bias C."""
    weights, quant = _weights(graph, op)
    conv_weights = graph.add_const(f"{op.inputs[1]}_conv1x1", weights[:, :, None, None],
                                   quant=quant)
    _conv1x1(op, [op.inputs[0], conv_weights, *op.inputs[2:3]], list(op.outputs))


def fold_channels_last(graph: Graph) -> None:
    """Drop a Transpose to channels-last and the Transposes back when only per-position ops
    lie between them, rewriting those ops for the NCHW tensor (see the module doc). In
    place; a region with any other reader is left as it is."""
    consumers = graph.consumers()
    dropped: set[int] = set()
    for start in list(graph.ops):
        if id(start) in dropped or not _is_transpose(start, TO_LAST) \
                or graph.tensor(start.inputs[0]).rank != 4:
            continue
        found = _region(graph, start, consumers)
        if found is None:
            continue
        inner, exits, tensors = found
        for op in inner:
            if id(op) in dropped:
                continue
            if op.type == "LayerNormalization":
                op.attrs.pop("axis", None)
                op.attrs["axes"] = [1]
                op.inputs[1:3] = [_to_axis1(graph, n) if n else n for n in op.inputs[1:3]]
            elif op.type == "MatMul":
                _matmul_to_conv(graph, op)
            elif op.type == "Reshape":  # the first of a `_flat_gemm` unit
                _gemm_to_conv(graph, inner[inner.index(op):inner.index(op) + 3], dropped)
            elif op.type in BINARY:
                op.inputs[:2] = [_to_axis1(graph, n) if n not in tensors else n
                                 for n in op.inputs[:2]]
        for name in tensors:
            if name in graph.tensors and graph.tensor(name).rank == 4:
                graph.tensor(name).shape = nchw(graph.tensor(name).shape)
        graph.replace_uses(start.outputs[0], start.inputs[0])
        producers = {name: op for op in inner for name in op.outputs}
        for op in exits:
            if op.outputs[0] in graph.outputs:  # the region's last op writes the output
                producer = producers[op.inputs[0]]
                producer.outputs[producer.outputs.index(op.inputs[0])] = op.outputs[0]
            else:
                graph.replace_uses(op.outputs[0], op.inputs[0])
        dropped.update(id(op) for op in (start, *exits))
    graph.ops = [op for op in graph.ops if id(op) not in dropped]
