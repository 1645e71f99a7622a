"""Reading and finishing converted (Q/DQ) graphs.

`add_int32_biases` is the one post-convert pass: every conv / linear bias
(PTQ's BN-folded ones, QAT's folded at convert time) leaves torchao's convert
in float, and becomes int32 here with scale = input scale x weight scale, as
the TFLite spec wants. It is done here, in float64, and not by torchao's
derived bias spec, because torchao clamps the int32 range in float32, where
2**31 - 1 rounds to 2**31 and the cast wraps to -2**31: a bias too large for
its scale flipped sign. `weighted_ops` and `qdq_counts` read a converted graph
back for tests, metrics and the exporter.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch.fx import GraphModule, Node

from edgecnn.qmath import BIAS_RANGE, bias_safe_weight_scale, quantize_bias
from edgecnn.util import traced_frame


class BiasRangeWarning(UserWarning):
    """A weight scale was raised so that the layer's int32 bias fits (named in the message)."""

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten

QUANTIZE_OPS = (qd.quantize_per_tensor.default, qd.quantize_per_channel.default)
DEQUANTIZE_PER_TENSOR = (qd.dequantize_per_tensor.default,)
DEQUANTIZE_PER_CHANNEL = (qd.dequantize_per_channel.default,)
WEIGHTED_OPS = (aten.conv1d.default, aten.conv2d.default, aten.linear.default)
#: the dropout family as torch.export writes it, each (input, p, train): nn.Dropout and
#: F.dropout -> dropout, nn.Dropout1d/2d/3d -> feature_dropout, nn.AlphaDropout ->
#: alpha_dropout, nn.FeatureAlphaDropout -> feature_alpha_dropout (in place: their `_` forms,
#: made functional by `quantizer.functionalize_inplace`; native_dropout appears only in
#: decomposed programs, which the capture does not make). The `train` flag is a literal the
#: capture fixes: QAT switches it (`bn_fold.enable_train_eval`), convert turns it off.
DROPOUT_OPS = (aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
               aten.feature_alpha_dropout.default)
DROPOUT_TRAIN = 2
#: arguments that make a random op deterministic: off (rrelu, lstm, gru) or zero
#: (scaled_dot_product_attention's dropout_p, an RNN's dropout)
_RANDOM_OFF = {"train": False, "training": False, "dropout_p": 0.0, "dropout": 0.0}


def calls(node: object, targets: object) -> bool:
    """`node` calls `targets`: one op overload (aten.conv2d.default) or a tuple of them."""
    if not isinstance(targets, tuple):
        targets = (targets,)
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def draws_random(node: object) -> bool:
    """`node` draws random numbers: an op torch tags `nondeterministic_seeded` (bernoulli,
    rand*, randn*, randint*, uniform_, normal_, rrelu in training, ...) other than the
    dropout family (`DROPOUT_OPS`, switched by QAT's train() / eval() and off after
    convert), unless its arguments switch the randomness off (`_RANDOM_OFF`)."""
    if not isinstance(node, Node) or node.op != "call_function" or calls(node, DROPOUT_OPS) \
            or torch.Tag.nondeterministic_seeded not in getattr(node.target, "tags", ()):
        return False
    schema = node.target._schema
    values = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    values.update(zip((a.name for a in schema.arguments), node.args, strict=False))
    values.update(node.kwargs)
    return not any(name in values and values[name] == off for name, off in _RANDOM_OFF.items())


def source_line(node: Node) -> str:
    """Where the user's code made `node`: its module path (`blocks.0.drop_path`), else
    the file and line of its stack trace (`model.py:12`, `util.traced_frame`), else ""."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values() if path]
    if paths:
        return paths[-1]
    frame = traced_frame(node.meta.get("stack_trace") or "")
    return f"{frame[0]}:{frame[1]}" if frame else ""


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


def layer_name(node: Node) -> str:
    """The module path of the layer a node came from (`features.3.conv`), else its node name."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values() if path]
    return paths[-1] if paths else node.name


def set_constant(gm: GraphModule, node: Node, value: torch.Tensor) -> None:
    """Replace the tensor behind get_attr `node` by `value`, cast to the old tensor's dtype
    (a Parameter stays a Parameter, with its requires_grad)."""
    owner = gm
    *parents, name = str(node.target).split(".")
    for part in parents:
        owner = getattr(owner, part)
    old = getattr(owner, name)
    value = value.to(old.dtype)
    if isinstance(old, torch.nn.Parameter):
        value = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    setattr(owner, name, value)


def add_zero_bias(gm: GraphModule, op: Node, channels: int, suffix: str) -> Node:
    """Give a bias-free conv / linear node a zero bias buffer (`<op name>_<suffix>`,
    float32, `channels` long) as its third argument; returns the new get_attr node."""
    name = f"{op.name}_{suffix}"
    gm.register_buffer(name, torch.zeros(channels))
    with gm.graph.inserting_before(op):
        bias = gm.graph.get_attr(name)
    args = list(op.args) + [None] * max(0, 3 - len(op.args))
    args[2] = bias
    op.args = tuple(args)
    return bias


def fit_bias_range(gm: GraphModule, op: WeightedOp, bias: torch.Tensor) -> torch.Tensor:
    """Raise the per-channel weight scales of `op` where its int32 bias would not fit (with
    room for the int32 accumulation, `qmath.bias_safe_weight_scale`).

    Rewrites the int8 weight of those channels at the new scale (round to nearest,
    clamped to the weight range) and warns with the layer's name. Returns the weight
    scales to use (unchanged when every bias fits).
    """
    old = op.weight_scale.detach().to(torch.float32).numpy()
    fan_in = op.weight.numel() // op.weight.shape[0]
    new = bias_safe_weight_scale(bias.numpy(), op.input_scale, old, fan_in)
    moved = np.flatnonzero(new != old)
    if not moved.size:
        return op.weight_scale
    w_dq = op.node.args[1]
    ratio = torch.ones(len(old), dtype=torch.float64)
    ratio[moved] = torch.from_numpy(old[moved] / new[moved]).to(torch.float64)
    shape = [-1] + [1] * (op.weight.dim() - 1)
    weight = torch.round(op.weight.to(torch.float64) * ratio.reshape(shape))
    weight = weight.clamp(*op.weight_range).to(op.weight.dtype)
    scale = torch.from_numpy(new).to(op.weight_scale.dtype)
    set_constant(gm, w_dq.args[0], weight)
    set_constant(gm, w_dq.args[1], scale)
    channels = ", ".join(str(c) for c in moved[:8]) + (" ..." if moved.size > 8 else "")
    warnings.warn(f"layer {layer_name(op.node)!r}: weight scale raised on {moved.size} output "
                  f"channel(s) ({channels}) so the int32 bias fits (|bias| up to "
                  f"{float(bias.abs().max()):.3g} with near-zero weights)", BiasRangeWarning,
                  stacklevel=3)
    return scale


def add_int32_biases(gm: GraphModule) -> int:
    """Give every quantized conv / linear with a float bias an int32 dequantized bias.

    scale = input scale x weight scale per channel, zero point 0 (TFLite spec),
    rounded and clamped in float64; where a bias would not fit in int32, the
    channel's weight scale is raised first (`fit_bias_range`, with a
    `BiasRangeWarning`). Mutates `gm` in place; returns the number of biases quantized.
    """
    count = 0
    for op in weighted_ops(gm):
        b = op.node.args[2] if len(op.node.args) > 2 else None
        if not isinstance(b, Node) or b.op != "get_attr" or op.bias is None:
            continue
        bias = op.bias.detach().to(torch.float64).reshape(-1)
        weight_scale = fit_bias_range(gm, op, bias)
        scale = (op.input_scale * weight_scale.to(torch.float64)).to(torch.float32)
        q = torch.from_numpy(quantize_bias(bias.numpy(), scale.numpy()))
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
