"""Fuse RELU / RELU6 / RELU_N1_TO_1 into the producer's fused_activation_function."""

from __future__ import annotations

from edgecnn.export.tflite.builtins import record
from edgecnn.export.tflite.graph import Graph, Op, Tensor


def _exact(between: Tensor, result: Tensor) -> bool:
    """Fusing is exact in float, and in int8 when the tensor between the two ops
    is unquantized (a fused conv-relu pattern) or quantized like the result."""
    return between.quant is None or between.quant.same_as(result.quant)


def _is(op: Op, flag: str) -> bool:
    rec = record(op)
    return rec is not None and getattr(rec, flag)


def fuse_activations(graph: Graph) -> None:
    """In place: an activation whose input has one reader, an op that can fuse it,
    is removed and its producer writes the activation's output directly (the builtin
    records say which are activations, `fusable`, and which can take one,
    `fuses_activation`)."""
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    kept: list[Op] = []
    for op in graph.ops:
        source = op.inputs[0] if op.inputs else ""
        producer = producers.get(source)
        if (_is(op, "fusable") and producer is not None and _is(producer, "fuses_activation")
                and producer.attrs.get("fused_activation_function") == "NONE"
                and len(consumers.get(source, [])) == 1 and source not in outputs
                and _exact(graph.tensor(source), graph.tensor(op.outputs[0]))):
            producer.attrs["fused_activation_function"] = op.type
            producer.outputs[0] = op.outputs[0]
            producers[op.outputs[0]] = producer
            continue
        kept.append(op)
    graph.ops = kept
