"""GroupNorm(1, C) as torch.onnx writes it: one normalization over C, H, W, no reshapes."""

from __future__ import annotations

from edgecnn.export.tflite.graph import Graph


def fuse_group_norm(graph: Graph) -> None:
    """Reshape [N, C, H, W] -> [N, 1, C*H*W], InstanceNormalization (scale and B of one
    value), Reshape back -> one LayerNormalization over axes 1, 2, 3 (`axes`), so the
    layout pass needs no TRANSPOSE to NCHW order for the reshapes (a mean over C, H and W
    is the same in either order). torch.onnx writes GroupNorm(G, C) this way with the
    affine Mul / Add after it; G > 1 is left as it is (its groups need NCHW order). In
    place."""
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
        norm.type = "LayerNormalization"
        norm.attrs = {"epsilon": norm.attrs.get("epsilon", 1e-5), "axes": [1, 2, 3]}
        norm.inputs[0], norm.outputs[0] = first.inputs[0], last.outputs[0]
        dropped.update((id(last),) + ((id(first),) if len(consumers[first.outputs[0]]) == 1
                                      else ()))
    graph.ops = [op for op in graph.ops if id(op) not in dropped]
