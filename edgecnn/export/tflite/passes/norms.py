"""GroupNorm(G, C) as torch.onnx writes it (Reshape, InstanceNormalization, Reshape, Mul, Add):
one GroupNormalization, no reshapes in NCHW order."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Graph, Op


def _const_values(graph: Graph, name: str) -> np.ndarray | None:
    data = graph.const(name)
    if data is None:
        return None
    quant = graph.tensor(name).quant
    return (data if quant is None else quant.dequantize(data)).astype(np.float64)


def _affine(graph: Graph, op: Op | None, kind: str, channels: int) -> np.ndarray | None:
    """The constant of a Mul / Add of kind `kind` by a per-channel ([C, 1, 1]) or scalar
    constant, as [C, 1, 1]; None for any other op."""
    if op is None or op.type != kind or len(op.inputs) != 2:
        return None
    values = [_const_values(graph, n) for n in op.inputs]
    const = next((v for v in values if v is not None), None)
    if const is None or sum(v is None for v in values) != 1 \
            or const.size not in (1, channels) or const.squeeze().ndim > 1:
        return None
    return np.broadcast_to(const.reshape(-1, 1, 1), (channels, 1, 1))


def fuse_group_norm(graph: Graph) -> None:
    """Reshape [N, C, H, W] -> [N, G, C/G*H*W], InstanceNormalization (scale and B per group),
    Reshape back -> one GroupNormalization (num_groups G, scale and bias per channel,
    opset 21's form), so the layout pass needs no TRANSPOSE to NCHW order for the reshapes:
    its lowering groups the NHWC tensor's channels itself (`ops.norm`). torch.onnx writes
    GroupNorm(G, C) this way with the affine Mul / Add after it: they become the
    normalization's scale and bias, and it takes the Add's node name (`node_group_norm`,
    after torch's node). In place."""
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    dropped: set[int] = set()
    for norm in graph.ops:
        if norm.type != "InstanceNormalization":
            continue
        first = producers.get(norm.inputs[0])
        readers = consumers.get(norm.outputs[0], [])
        last = readers[0] if len(readers) == 1 and readers[0].type == "Reshape" else None
        if first is None or first.type != "Reshape" or last is None \
                or norm.outputs[0] in outputs or norm.inputs[0] in outputs:
            continue
        x, flat = graph.tensor(first.inputs[0]), graph.tensor(norm.inputs[0])
        if x.rank != 4 or flat.rank != 3 or flat.shape[0] != x.shape[0] \
                or x.shape[1] % flat.shape[1] \
                or graph.tensor(last.outputs[0]).shape != x.shape \
                or len(consumers.get(norm.inputs[0], [])) != 1:
            continue
        groups, channels = flat.shape[1], x.shape[1]
        scale, bias = (_const_values(graph, n) for n in norm.inputs[1:3])
        if scale is None or bias is None or scale.size != groups or bias.size != groups:
            continue
        norm.type = "GroupNormalization"
        norm.attrs = {"epsilon": norm.attrs.get("epsilon", 1e-5), "num_groups": groups}
        norm.inputs[0], norm.outputs[0] = first.inputs[0], last.outputs[0]
        dropped.update((id(last),) + ((id(first),) if len(consumers[first.outputs[0]]) == 1
                                      else ()))
        per_channel = channels // groups
        _absorb_affine(graph, norm, np.repeat(scale.reshape(-1), per_channel),
                       np.repeat(bias.reshape(-1), per_channel), consumers, dropped)
    graph.ops = [op for op in graph.ops if id(op) not in dropped]


def _absorb_affine(graph: Graph, norm: Op, scale: np.ndarray, bias: np.ndarray,
                   consumers: dict[str, list[Op]], dropped: set[int]) -> None:
    """The per-channel Mul then Add after `norm` (GroupNorm's weight and bias) folded into
    its per-channel ([C]) scale and bias inputs: (n * s + b) * m + a = n * (s m) + (b m + a).
    Only through float tensors: a quantized one between them (a QDQ model of another tool)
    is a rounding the fold would drop, so the Mul / Add stay ops of their own."""
    channels = scale.size
    for kind in ("Mul", "Add"):
        if norm.outputs[0] in graph.outputs or graph.tensor(norm.outputs[0]).quant is not None:
            break
        readers = consumers.get(norm.outputs[0], [])
        op = readers[0] if len(readers) == 1 else None
        const = _affine(graph, op, kind, channels)
        if const is None:
            break
        const = const.reshape(-1)
        if kind == "Mul":
            scale, bias = scale * const, bias * const
        else:
            bias = bias + const
        norm.outputs[0], norm.name = op.outputs[0], op.name
        dropped.add(id(op))
    norm.inputs[1:3] = [graph.add_const(f"{norm.name}_{hint}", values.astype(np.float32))
                        for hint, values in (("scale", scale), ("bias", bias))]
