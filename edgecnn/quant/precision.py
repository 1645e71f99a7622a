"""Selective precision: layers the user keeps float (`--keep-float PATTERN`).

A pattern is a regular expression matched in full (`re.fullmatch`) against a
node's names: its module path and every enclosing one (`block.conv`, `block`)
and its FX node name (`conv2d_1`, `add_2`). A matched node is claimed before
the int8 annotators run, with no quantization (`annotators.FLOAT_KEY`): it computes in float on the
dequantized outputs of its int8 producers, and its int8 readers quantize its
output on their input edge. A matched conv / linear takes its fused BN and
activation along (one layer, as TFLite fuses it).

A tensor leaves int8 only when its producer and all its readers are float: a
float layer still reads the int8 tensors before it, so to take one tensor out
of int8 (the planted model's `block.conv` output), keep its writer and its
readers float (`block\\.(conv|proj)`).

In a converted program a float conv / linear is one whose weight is not
dequantized (`float_layers`); the QDQ ONNX keeps its weights float and no
Q/DQ on its own tensors, and the TFLite converter runs it between a
DEQUANTIZE and a QUANTIZE (`export.tflite.passes.islands`).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch.fx import GraphModule, Node

from edgecnn.errors import EdgecnnError
from edgecnn.quant.annotators import (
    BATCH_NORM_OPS,
    CONV_OPS,
    FLOAT_KEY,
    LINEAR_OPS,
    PASSTHROUGH,
    calls,
    fuse_activation,
    sole_user,
)
from edgecnn.quant.graph import layer_name
from edgecnn.quant.spec import compile_patterns

WEIGHTED = CONV_OPS + LINEAR_OPS
SHOWN = 12  # layer names listed in the error for a pattern that matches nothing


def node_names(node: Node) -> list[str]:
    """The names a pattern can match: module paths (innermost first), then the node name."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values() if path]
    return [*reversed(paths), node.name]


def activation_nodes(gm: GraphModule) -> list[Node]:
    """call_function nodes downstream of the model inputs (the ones annotators quantize)."""
    on_path: set[Node] = {n for n in gm.graph.nodes if n.op == "placeholder"}
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and any(a in on_path for a in node.all_input_nodes):
            on_path.add(node)
            if node.target not in PASSTHROUGH:
                found.append(node)
    return found


def known_layers(gm: GraphModule) -> list[str]:
    """Layer names for error messages: each weighted op's module path, in graph order."""
    names = [layer_name(n) for n in activation_nodes(gm) if calls(n, WEIGHTED)]
    return list(dict.fromkeys(names))


def select(gm: GraphModule, patterns: Iterable[str], flag: str) -> list[Node]:
    """Nodes any pattern matches, in graph order.

    Raises EdgecnnError when a pattern matches no node, naming the flag and listing
    layer names, so a typo fails in seconds, before calibration or training.
    """
    compiled = compile_patterns(patterns, flag)
    nodes = activation_nodes(gm)
    chosen: dict[Node, None] = {}
    for pattern in compiled:
        hits = [n for n in nodes if any(pattern.fullmatch(name) for name in node_names(n))]
        if not hits:
            layers = known_layers(gm)
            shown = ", ".join(layers[:SHOWN]) + (" ..." if len(layers) > SHOWN else "")
            raise EdgecnnError(f"{flag} {pattern.pattern!r} matches no layer or node (a regular "
                               f"expression over module paths and node names, matched in "
                               f"full); layers: {shown}")
        chosen.update(dict.fromkeys(hits))
    return [n for n in nodes if n in chosen]


def with_fused(node: Node) -> list[Node]:
    """A conv / linear with the BN and activation TFLite fuses into it; other nodes alone."""
    if not calls(node, WEIGHTED):
        return [node]
    chain = [node]
    bn = sole_user(node)
    if calls(bn, BATCH_NORM_OPS):
        chain.append(bn)
    _, fused = fuse_activation(chain[-1])
    return chain + fused


def keep_float(gm: GraphModule, patterns: Iterable[str]) -> list[Node]:
    """Claim the nodes `patterns` select (and their fused BN / activation) with no
    quantization, before the int8 annotators run. In place; returns the claimed nodes.
    Raises EdgecnnError for a pattern that matches nothing (see `select`)."""
    patterns = list(patterns)
    if not patterns:
        return []
    claimed = [m for node in select(gm, patterns, "--keep-float") for m in with_fused(node)]
    claimed = list(dict.fromkeys(claimed))
    for node in claimed:
        node.meta[FLOAT_KEY] = True
    return claimed


def _weighted_layers(gm: GraphModule, quantized: bool) -> list[str]:
    names = []
    for node in activation_nodes(gm):
        if not calls(node, WEIGHTED):
            continue
        weight = node.args[1]
        dequantized = (isinstance(weight, Node) and weight.op == "call_function"
                       and "dequantize" in str(weight.target))
        if dequantized == quantized:
            names.append(layer_name(node))
    return list(dict.fromkeys(names))


def float_layers(gm: GraphModule) -> list[str]:
    """Layers of a converted program that compute in float: conv / linear whose weight
    is not dequantized (module paths, graph order)."""
    return _weighted_layers(gm, quantized=False)


def int8_layers(gm: GraphModule) -> list[str]:
    """The conv / linear layers of a converted program with quantized weights."""
    return _weighted_layers(gm, quantized=True)
