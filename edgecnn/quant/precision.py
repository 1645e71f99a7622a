"""Selective precision: layers the user keeps float (`--keep-float PATTERN`) or moves
to TFLite's 16x8 scheme (`--int16 PATTERN`: int16 activations, int8 weights).

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

Ops with no int8 TFLite kernel (`annotators.is_float_island`: layer / group norm, a
division by a tensor, sqrt, reciprocal, powers but x ** 2) are left float the same way
without a pattern: the float islands (`float_islands` lists them in a converted program).

In a converted program a float conv / linear is one whose weight is not
dequantized (`float_layers`); the QDQ ONNX keeps its weights float and no
Q/DQ on its own tensors, and the TFLite converter runs it between a
DEQUANTIZE and a QUANTIZE (`export.tflite.passes.islands`).

`--int16` selects with the same rules (`select`, `with_fused`); a node `--keep-float` selects
too is an error naming both flags (a layer is int16 or float, not both). A matched node is marked
(`annotators.INT16_KEY`) and the `int16` annotator moves its activation specs to int16
(`spec.Specs.activation16`). As with float, a tensor is int16 only when its writer and
all its readers are int16 layers: an int16 layer reading an int8 tensor requantizes it
on its input edge (int8 -> int16, exact), and an int8 reader of an int16 tensor
requantizes it to int8 (`block\\.(conv|proj)` takes the planted tensor out of int8). In a
converted program an int16 layer is a conv / linear whose input is dequantized from
int16 (`int16_layers`). `--int16` may also name the ops between layers whose TFLite builtin
has a 16x8 kernel on both runtimes (`annotators.INT16_OPS`: pools, add / mul / sub, mean,
concat, reshapes, relu / relu6 / leaky relu, sigmoid ...): a pool or an add between int16
layers keeps their tensors int16 (`block` moves a residual block's convs and its add, and
no int16 -> int8 -> int16 requantization is left between them). Such an op of a converted
program reads a tensor dequantized from int16 (`int16_ops`, named by `output_name`: the
name of the tensor its ONNX / TFLite op writes, which `edgecnn inspect` reports: the
exporter names tensors after the program's nodes, `export.onnx.source_names`, a bare add
or mul too).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.fx import GraphModule, Node

from edgecnn.errors import ParameterError
from edgecnn.quant.annotators import (
    ADD_OPS,
    BATCH_NORM_OPS,
    CONV_OPS,
    FLOAT_ISLAND_KEY,
    FLOAT_KEY,
    INT16_KEY,
    INT16_OPS,
    LINEAR_OPS,
    MUL_OPS,
    PASSTHROUGH,
    SCALAR_OPS,
    calls,
    fuse_activation,
    is_float_island,
    is_fusable_activation,
    sole_user,
)
from edgecnn.quant.graph import layer_name
from edgecnn.quant.spec import compile_patterns
from edgecnn.util import listing

WEIGHTED = CONV_OPS + LINEAR_OPS
#: ops whose TFLite builtin fuses a following relu / relu6 (`annotators.annotate_binary`)
BINARY = ADD_OPS + MUL_OPS + SCALAR_OPS


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


def known_names(gm: GraphModule, parameter: str) -> list[str]:
    """Names a pattern could select, for error messages, in graph order: each conv /
    linear's module path, and the node name of every other op but the BN / activation
    fused into a layer or an add, the float islands and, for int16, ops without a 16x8
    kernel."""
    nodes = activation_nodes(gm)
    fused = {m for n in nodes if calls(n, WEIGHTED) for m in _bn_act_after(n)}
    fused |= {sole_user(n) for n in nodes
              if calls(n, BINARY) and is_fusable_activation(sole_user(n))}
    names = [layer_name(n) if calls(n, WEIGHTED) else n.name for n in nodes
             if calls(n, WEIGHTED) or not (n in fused or is_float_island(n) or (
                 parameter == "int16" and not calls(n, INT16_OPS)))]
    return list(dict.fromkeys(names))


def select(gm: GraphModule, patterns: Iterable[str], parameter: str) -> list[Node]:
    """Nodes any pattern matches, in graph order.

    Raises ParameterError when a pattern matches no node, naming `parameter` (keep_float /
    int16) and listing the names it could match (`known_names`: the first 20, then how
    many more), so a typo fails in seconds, before calibration or training.
    """
    compiled = compile_patterns(patterns, parameter)
    nodes = activation_nodes(gm)
    chosen: dict[Node, None] = {}
    for pattern in compiled:
        hits = [n for n in nodes if any(pattern.fullmatch(name) for name in node_names(n))]
        if not hits:
            raise ParameterError(parameter, f"{pattern.pattern!r} matches no layer or node (a "
                                            f"regular expression over module paths and node "
                                            f"names, matched in full); layers and nodes: "
                                            f"{listing(known_names(gm, parameter))}")
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


def _fused_owner(node: Node) -> Node | None:
    """The conv / linear whose fused BN or activation `node` is, else None."""
    source = node
    for _ in range(2):  # activation <- BN <- conv at most
        inputs = [a for a in source.all_input_nodes if a.op == "call_function"]
        if not inputs:
            return None
        source = inputs[0]
        if calls(source, WEIGHTED):
            return source if node in with_fused(source) else None
    return None


def _binary_owner(node: Node) -> Node | None:
    """The add / mul / sub whose fused activation `node` is (one TFLite op), else None."""
    if not is_fusable_activation(node):
        return None
    source = next((a for a in node.all_input_nodes if a.op == "call_function"), None)
    return source if calls(source, BINARY) and sole_user(source) is node else None


def with_fused_binary(node: Node) -> list[Node]:
    """An add / mul / sub with the activation its TFLite builtin fuses; other nodes alone."""
    return [node, *fuse_activation(node)[1]] if calls(node, BINARY) else [node]


def output_name(node: Node) -> str:
    """The node whose output is the tensor `node`'s TFLite op writes: its fused activation
    for an add / mul / sub followed by one (the name `edgecnn inspect` gives the op)."""
    user = sole_user(node)
    return user.name if calls(node, BINARY) and is_fusable_activation(user) else node.name


def _refuse_fused_alone(selected: list[Node], parameter: str) -> None:
    """A BN / activation fused into a layer the patterns did not select would move
    nothing (the layer's annotation holds its specs): raise naming the layer."""
    chosen = set(selected)
    for node in selected:
        owner = None if calls(node, WEIGHTED) else _fused_owner(node)
        if owner is not None and owner not in chosen:
            raise ParameterError(parameter, f"selects node {node.name!r}, which is fused into "
                                            f"layer {layer_name(owner)} ({owner.name}); "
                                            "select that layer")


def _bn_act_after(layer: Node) -> list[Node]:
    """The BN and activation TFLite fuses into conv / linear `layer`, claimed or not."""
    after, user = [], sole_user(layer)
    if calls(user, BATCH_NORM_OPS):
        after, user = [user], sole_user(user)
    return after + ([user] if is_fusable_activation(user) else [])


def _refuse_float(marked: list[Node]) -> None:
    """An int16 node the keep_float patterns already claimed: raise naming the layers (a
    conv / linear with its fused BN and activation as one) or nodes both select."""
    both = [n for n in marked if n.meta.get(FLOAT_KEY)]
    fused = {m for n in both if calls(n, WEIGHTED) for m in _bn_act_after(n)}
    if both:
        names = list(dict.fromkeys(layer_name(n) if calls(n, WEIGHTED) else n.name
                                   for n in both if n not in fused))
        raise ParameterError("int16", f"and {{keep_float}} both select {listing(names)}: a "
                                      "layer is int16 or float, not both; narrow one pattern",
                             also=("keep_float",))


def _mark(gm: GraphModule, patterns: Iterable[str], parameter: str, key: str) -> list[Node]:
    """Set `node.meta[key]` on the nodes `patterns` select and their fused BN / activation.
    In place; returns the marked nodes."""
    patterns = list(patterns)
    if not patterns:
        return []
    selected = select(gm, patterns, parameter)
    if key == INT16_KEY:  # an activation fused into an add moves the add: one TFLite op
        selected += [owner for n in selected if (owner := _binary_owner(n)) is not None]
        selected = [m for node in selected for m in with_fused_binary(node)]
        _refuse_fused_alone(selected, parameter)
    marked = list(dict.fromkeys(m for node in selected for m in with_fused(node)))
    if key == INT16_KEY:
        _refuse_float(marked)
    for node in marked:
        node.meta[key] = True
    return marked


def keep_float(gm: GraphModule, patterns: Iterable[str]) -> list[Node]:
    """Claim the nodes `patterns` select (and their fused BN / activation) with no
    quantization, before the int8 annotators run. In place; returns the claimed nodes.
    Raises ParameterError for a pattern that matches nothing (see `select`)."""
    return _mark(gm, patterns, "keep_float", FLOAT_KEY)


def mark_int16(gm: GraphModule, patterns: Iterable[str]) -> list[Node]:
    """Mark the nodes `patterns` select (and their fused BN / activation) for 16x8, before
    the annotators run (the `int16` annotator reads the mark), after `keep_float`. In
    place; returns the marked nodes. Raises ParameterError for a pattern that matches
    nothing (see `select`), and naming int16 and keep_float when a node `keep_float`
    claimed is selected too: a layer is int16 or float, not both."""
    return _mark(gm, patterns, "int16", INT16_KEY)


def _dequantized(node: object) -> bool:
    return (isinstance(node, Node) and node.op == "call_function"
            and "dequantize" in str(node.target))


def _reads_int16(node: Node) -> bool:
    """The layer's input is dequantized from int16 (its last argument is the dtype)."""
    x = node.args[0]
    return _dequantized(x) and x.args[-1] == torch.int16


def _reads_dequantized(node: Node, dtype: torch.dtype) -> bool:
    """The op's first activation input is dequantized from `dtype`."""
    x = next((a for a in node.args if isinstance(a, Node)), None)
    if x is None and node.args and isinstance(node.args[0], (list, tuple)):  # cat
        x = next((a for a in node.args[0] if isinstance(a, Node)), None)
    return _dequantized(x) and x.args[-1] == dtype


def _ops(gm: GraphModule, dtype: torch.dtype) -> list[str]:
    return [output_name(node) for node in activation_nodes(gm)
            if calls(node, INT16_OPS) and not calls(node, WEIGHTED)
            and not node.meta.get(FLOAT_KEY) and not _dequantized(node)
            and _reads_dequantized(node, dtype)]


def int16_ops(gm: GraphModule) -> list[str]:
    """The ops of a converted program other than conv / linear that run 16x8: they read a
    tensor dequantized from int16 (graph order; a BN or activation fused into an int16
    layer reads the layer's output directly and is not listed). Each is named by the node
    whose output its TFLite op writes (`output_name`: an add's fused relu), the tensor name
    `edgecnn inspect` reports and a `--int16` pattern selects it by."""
    return _ops(gm, torch.int16)


def int16_capable_ops(gm: GraphModule) -> list[str]:
    """The int8 ops of a converted program other than conv / linear that `--int16` can move
    (`annotators.INT16_OPS`; node names, graph order; not those `--keep-float` claimed,
    which read int8 too): `--fallback int16` moves them with the layers that write their
    inputs."""
    return _ops(gm, torch.int8)


def _weighted_layers(gm: GraphModule, quantized: bool, int16: bool | None = None) -> list[str]:
    names = []
    for node in activation_nodes(gm):
        if not calls(node, WEIGHTED):
            continue
        if _dequantized(node.args[1]) != quantized:
            continue
        if int16 is not None and _reads_int16(node) != int16:
            continue
        names.append(layer_name(node))
    return list(dict.fromkeys(names))


def float_layers(gm: GraphModule) -> list[str]:
    """Layers of a converted program that compute in float: conv / linear whose weight
    is not dequantized (module paths, graph order)."""
    return _weighted_layers(gm, quantized=False)


def int8_layers(gm: GraphModule) -> list[str]:
    """The conv / linear layers of a converted program with quantized weights and int8
    inputs (module paths, graph order)."""
    return _weighted_layers(gm, quantized=True, int16=False)


def int16_layers(gm: GraphModule) -> list[str]:
    """The 16x8 layers of a converted program: conv / linear with quantized weights whose
    input is dequantized from int16 (module paths, graph order)."""
    return _weighted_layers(gm, quantized=True, int16=True)



def float_islands(gm: GraphModule) -> list[str]:
    """The ops of a program left float because their TFLite builtin has no int8 kernel
    (`annotators.is_float_island`: `FLOAT_OPS`, powers other than x ** 2; a division by a
    number is int8), and the ops no quantization rule covers (float in the int8 ONNX; the
    TFLite converter refuses them), as "module path (node name)" in graph order: the node
    name is the one the ONNX node (`node_<name>`) and the .tflite ops of the island carry."""
    names = []
    for node in activation_nodes(gm):
        if node.op != "call_function" or not (is_float_island(node)
                                              or node.meta.get(FLOAT_ISLAND_KEY)):
            continue
        layer = layer_name(node)
        names.append(node.name if layer == node.name else f"{layer} ({node.name})")
    return names
