"""GroupNorm(1, C) as torch.onnx writes it: one normalization over C, H, W, no reshapes."""

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
    """Reshape [N, C, H, W] -> [N, 1, C*H*W], InstanceNormalization (scale and B of one
    value), Reshape back -> one LayerNormalization over axes 1, 2, 3 (`axes`), so the
    layout pass needs no TRANSPOSE to NCHW order for the reshapes (a mean over C, H and W
    is the same in either order). torch.onnx writes GroupNorm(G, C) this way with the
    affine Mul / Add after it: they become the normalization's scale and bias, and it
    takes the Add's node name (`node_group_norm`, after torch's node). G > 1 is left as it
    is (its groups need NCHW order). In place."""
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
        if x.rank != 4 or flat.rank != 3 or flat.shape[1] != 1 \
                or graph.tensor(last.outputs[0]).shape != x.shape \
                or len(consumers.get(norm.inputs[0], [])) != 1:
            continue
        scale, bias = (_const_values(graph, n) for n in norm.inputs[1:3])
        if scale is None or bias is None or scale.size != 1 or bias.size != 1:
            continue
        norm.type = "LayerNormalization"
        norm.attrs = {"epsilon": norm.attrs.get("epsilon", 1e-5), "axes": [1, 2, 3]}
        norm.inputs[0], norm.outputs[0] = first.inputs[0], last.outputs[0]
        dropped.update((id(last),) + ((id(first),) if len(consumers[first.outputs[0]]) == 1
                                      else ()))
        _absorb_affine(graph, norm, scale, bias, consumers, dropped)
    graph.ops = [op for op in graph.ops if id(op) not in dropped]


def _absorb_affine(graph: Graph, norm: Op, scale: np.ndarray, bias: np.ndarray,
                   consumers: dict[str, list[Op]], dropped: set[int]) -> None:
    """The per-channel Mul then Add after `norm` (GroupNorm's weight and bias) folded into
    its scale and bias inputs: (n * s + b) * m + a = n * (s m) + (b m + a)."""
    channels = graph.tensor(norm.inputs[0]).shape[1]
    scale = np.full((channels, 1, 1), float(scale.reshape(-1)[0]))
    bias = np.full((channels, 1, 1), float(bias.reshape(-1)[0]))
    for kind in ("Mul", "Add"):
        if norm.outputs[0] in graph.outputs:
            break
        readers = consumers.get(norm.outputs[0], [])
        op = readers[0] if len(readers) == 1 else None
        const = _affine(graph, op, kind, channels)
        if const is None:
            break
        if kind == "Mul":
            scale, bias = scale * const, bias * const
        else:
            bias = bias + const
        norm.outputs[0], norm.name = op.outputs[0], op.name
        dropped.add(id(op))
    norm.inputs[1:3] = [graph.add_const(f"{norm.name}_{hint}", values.astype(np.float32))
                        for hint, values in (("scale", scale), ("bias", bias))]
