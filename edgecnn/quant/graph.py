"""Reading and finishing converted (Q/DQ) graphs.

`quantize_biases` is the one post-convert pass: QAT folds BN into a conv only
at convert time, which leaves that conv with a float bias; the TFLite spec
wants it int32 with scale = input scale x weight scale. `weighted_ops` and
`qdq_counts` read a converted graph back for tests, metrics and the exporter.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from edgecnn.quant.spec import BIAS_RANGE

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten

QUANTIZE_OPS = (qd.quantize_per_tensor.default, qd.quantize_per_channel.default)
DEQUANTIZE_PER_TENSOR = (qd.dequantize_per_tensor.default,)
DEQUANTIZE_PER_CHANNEL = (qd.dequantize_per_channel.default,)
WEIGHTED_OPS = (aten.conv1d.default, aten.conv2d.default, aten.linear.default)


def calls(node: object, targets: tuple) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def constant(gm: GraphModule, node: object) -> torch.Tensor | None:
    """The tensor behind a get_attr node, else None."""
    if not isinstance(node, Node) or node.op != "get_attr":
        return None
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


@dataclass
class WeightedOp:
    """A conv / linear of a converted graph with the quantization of its operands."""

    node: Node
    input_scale: float
    input_zero_point: int
    weight: torch.Tensor  # int8
    weight_scale: torch.Tensor  # per output channel
    weight_zero_point: torch.Tensor
    weight_range: tuple[int, int]
    bias: torch.Tensor | None  # int32 when quantized
    bias_scale: torch.Tensor | None
    bias_zero_point: torch.Tensor | None


def weighted_ops(gm: GraphModule) -> list[WeightedOp]:
    """Every conv / linear whose input and weight are dequantized (a quantized op)."""
    found = []
    for node in gm.graph.nodes:
        if not calls(node, WEIGHTED_OPS):
            continue
        x_dq, w_dq = node.args[0], node.args[1]
        if not (calls(x_dq, DEQUANTIZE_PER_TENSOR) and calls(w_dq, DEQUANTIZE_PER_CHANNEL)):
            continue
        b = node.args[2] if len(node.args) > 2 else None
        bias = bias_scale = bias_zero_point = None
        if calls(b, DEQUANTIZE_PER_CHANNEL):
            bias, bias_scale, bias_zero_point = (constant(gm, a) for a in b.args[:3])
        elif isinstance(b, Node):
            bias = constant(gm, b)
        found.append(WeightedOp(
            node=node, input_scale=float(x_dq.args[1]), input_zero_point=int(x_dq.args[2]),
            weight=constant(gm, w_dq.args[0]), weight_scale=constant(gm, w_dq.args[1]),
            weight_zero_point=constant(gm, w_dq.args[2]),
            weight_range=(int(w_dq.args[4]), int(w_dq.args[5])), bias=bias,
            bias_scale=bias_scale, bias_zero_point=bias_zero_point))
    return found


def quantize_biases(gm: GraphModule) -> int:
    """Give every quantized conv / linear with a float bias an int32 dequantized bias.

    scale = input scale x weight scale per channel, zero point 0 (TFLite spec).
    Mutates `gm` in place; returns the number of biases quantized.
    """
    count = 0
    for op in weighted_ops(gm):
        b = op.node.args[2] if len(op.node.args) > 2 else None
        if not isinstance(b, Node) or b.op != "get_attr" or op.bias is None:
            continue
        scale = (op.input_scale * op.weight_scale.to(torch.float64)).to(torch.float32)
        q = torch.round(op.bias.detach().to(torch.float64) / scale.to(torch.float64))
        q = q.clamp(*BIAS_RANGE).to(torch.int32)
        prefix = f"{str(b.target).replace('.', '_')}_int32"
        names = {}
        for suffix, value in (("", q), ("_scale", scale),
                              ("_zero_point", torch.zeros_like(q))):
            names[suffix] = prefix + suffix
            gm.register_buffer(names[suffix], value)
        with gm.graph.inserting_before(op.node):
            args = [gm.graph.get_attr(names[s]) for s in ("", "_scale", "_zero_point")]
            dq = gm.graph.call_function(qd.dequantize_per_channel.default,
                                        (*args, 0, BIAS_RANGE[0], BIAS_RANGE[1], torch.int32))
        op.node.replace_input_with(b, dq)
        if not b.users:
            gm.graph.erase_node(b)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def qdq_counts(gm: GraphModule) -> dict[str, int]:
    """call_function counts by short op name (conv2d, quantize_per_tensor, ...)."""
    names = Counter(str(n.target).split(".")[-2] if "." in str(n.target) else str(n.target)
                    for n in gm.graph.nodes if n.op == "call_function")
    return dict(sorted(names.items()))
