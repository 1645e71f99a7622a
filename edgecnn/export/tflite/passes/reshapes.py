"""Fold chains of RESHAPE and drop reshapes that change nothing."""

from __future__ import annotations

from edgecnn.export.tflite.graph import Graph, Op


def fold_reshapes(graph: Graph) -> None:
    """In place: RESHAPE(RESHAPE(x)) becomes one RESHAPE when only the second reads
    the middle tensor; a RESHAPE to its input's own shape disappears (unless it
    writes a model output)."""
    outputs = set(graph.outputs)
    consumers = graph.consumers()
    producers = graph.producers()
    kept: list[Op] = []
    dropped: set[int] = set()
    for op in graph.ops:
        if op.type != "RESHAPE":
            continue
        source = producers.get(op.inputs[0])
        if (source is not None and source.type == "RESHAPE" and id(source) not in dropped
                and len(consumers.get(op.inputs[0], [])) == 1 and op.inputs[0] not in outputs):
            op.inputs[0] = source.inputs[0]
            dropped.add(id(source))
    for op in graph.ops:
        if id(op) in dropped:
            continue
        if (op.type == "RESHAPE" and op.outputs[0] not in outputs
                and graph.tensor(op.inputs[0]).shape == graph.tensor(op.outputs[0]).shape):
            graph.replace_uses(op.outputs[0], op.inputs[0])
            continue
        kept.append(op)
    graph.ops = kept
