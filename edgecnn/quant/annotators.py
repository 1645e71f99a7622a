"""Annotators: one small function per op pattern, applied in `ANNOTATORS` order.

Fused patterns come first so that a conv's BN and activation are claimed by the
conv before the single-op annotators see them: conv [+ bn] [+ relu/relu6] is one
unit with one quantization point after the activation, as TFLite fuses it.
The last pass (`share_with_producers`) makes every input edge reuse its
producer's quantization: a TFLite tensor has exactly one scale and zero point.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

from edgecnn.export.tflite.builtins import BUILTINS
from edgecnn.export.tflite.ops.elementwise import CLIP_BUILTINS, clip_builtins, pow_builtin
from edgecnn.quant.graph import DROPOUT_OPS, calls
from edgecnn.quant.spec import Specs

aten = torch.ops.aten
KEY = "quantization_annotation"

#: `capture` rewrites the string-padding overloads (conv2d.padding, 'same' / 'valid') to these
CONV_OPS = (aten.conv1d.default, aten.conv2d.default)
LINEAR_OPS = (aten.linear.default,)
BATCH_NORM_OPS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
#: TFLite fused activations: NONE, RELU, RELU6, RELU_N1_TO_1
RELU_OPS = (aten.relu.default,)
RELU6_OPS = (aten.relu6.default,)  # F.relu6; nn.ReLU6 is hardtanh(0, 6)
HARDTANH_OPS = (aten.hardtanh.default,)
FUSED_HARDTANH_BOUNDS = ((0.0, 6.0), (-1.0, 1.0))
#: clamp(min=0) exports as Max(x, 0) -> RELU, clamp(0, 6) / (-1, 1) as Clip -> RELU6 /
#: RELU_N1_TO_1: fusable as relu / hardtanh are; other bounds: `annotate_clamp`
CLAMP_OPS = (aten.clamp.default,)
FUSED_CLAMP_BOUNDS = tuple(CLIP_BUILTINS)
ADD_OPS = (aten.add.Tensor,)
MUL_OPS = (aten.mul.Tensor,)
#: with a scalar operand these become MUL / ADD / SUB by a constant (`annotate_binary`)
SCALAR_OPS = (aten.sub.Tensor, aten.div.Tensor)
#: lowered to TFLite MEAN, which may requantize: own output quantization (a non-global
#: adaptive pool exports as AveragePool, which may not: see `is_global_pool`)
MEAN_OPS = (aten.mean.dim, aten.adaptive_avg_pool2d.default)

#: single-input aten op -> the TFLite builtin it becomes (None: nothing, e.g. dropout at
#: inference). Its int8 contract is that builtin's record (`export.tflite.builtins`), so the
#: quantizer and the converter state it once: "same" shares the input's quantization,
#: "fixed" takes the record's fixed output, "requantize" gets its own.
LOWERS_TO: dict[object, str | None] = {
    aten.max_pool2d.default: "MAX_POOL_2D", aten.avg_pool2d.default: "AVERAGE_POOL_2D",
    aten.flatten.using_ints: "RESHAPE", aten.view.default: "RESHAPE",
    aten.reshape.default: "RESHAPE", aten.squeeze.dim: "RESHAPE", aten.squeeze.dims: "RESHAPE",
    aten.unsqueeze.default: "RESHAPE", aten.permute.default: "TRANSPOSE",
    aten.slice.Tensor: "STRIDED_SLICE", aten.transpose.int: "TRANSPOSE",
    aten.select.int: "STRIDED_SLICE",  # x[i]: ONNX Gather of a constant index
    aten.contiguous.default: None,
    # x * s.expand_as(x): the Mul broadcasts s (`passes.constants.drop_broadcast_expands`)
    aten.expand_as.default: None, aten.expand.default: None,
    # several outputs (getitem reads each): `annotate_split`, before the single-output ones
    aten.split.Tensor: "SPLIT", aten.split_with_sizes.default: "SPLIT",
    aten.chunk.default: "SPLIT",
    aten.unbind.int: "STRIDED_SLICE",  # ONNX Slice + Squeeze per piece
    # (values, indices): a max over dims, a global adaptive max pool (a non-global one
    # exports as MaxPool, "same" too); x.amax has one output
    aten.max.dim: "REDUCE_MAX", aten.adaptive_max_pool2d.default: "REDUCE_MAX",
    aten.amax.default: "REDUCE_MAX",
    aten.upsample_nearest2d.vec: "RESIZE_NEAREST_NEIGHBOR",
    aten.upsample_bilinear2d.vec: "RESIZE_BILINEAR",
    aten.constant_pad_nd.default: "PAD", aten.pad.default: "PAD",
    **dict.fromkeys(DROPOUT_OPS), aten.clone.default: None, aten.alias.default: None,
    aten.relu6.default: "RELU6",
    aten.sigmoid.default: "LOGISTIC", aten.tanh.default: "TANH",
    aten.softmax.int: "SOFTMAX", aten._softmax.default: "SOFTMAX",
    aten.log_softmax.int: "LOG_SOFTMAX", aten._log_softmax.default: "LOG_SOFTMAX",
    aten.hardswish.default: "HARD_SWISH", aten.relu.default: "RELU",
    aten.hardtanh.default: "RELU6",  # or RELU_N1_TO_1
    aten.leaky_relu.default: "LEAKY_RELU", aten.prelu.default: "PRELU",
    aten.gelu.default: "GELU",
    # ADD (fused RELU6) then MUL by 1/6: see lower_hardsigmoid
    aten.hardsigmoid.default: "MUL",
    aten.batch_norm.default: "DEPTHWISE_CONV_2D",  # standalone: a 1x1 depthwise conv
    aten._native_batch_norm_legit_no_training.default: "DEPTHWISE_CONV_2D",
    # no int8 kernel ("float"): normalizations become MEAN, SUB, MUL, MEAN, ADD, SQRT, DIV
    # (+ MUL, ADD) in float (export.tflite.ops.norm); a division by a tensor is DIV
    aten.layer_norm.default: "DIV", aten.group_norm.default: "DIV",
    aten.div.Tensor: "DIV",  # by a Python number: MUL by its reciprocal (scalar_arithmetic)
    aten.sqrt.default: "SQRT",
    aten.reciprocal.default: "DIV",  # 1 / x: DIV(1, x)
    aten.pow.Tensor_Tensor: "POW", aten.pow.Scalar: "POW",  # x ** c: `annotate_pow`
    # an int8 kernel with its own output scale (rsqrt: Sqrt -> Reciprocal in ONNX, one RSQRT
    # in TFLite, `passes.fusions.fuse_rsqrt`)
    aten.exp.default: "EXP", aten.rsqrt.default: "RSQRT",
    aten.abs.default: "ABS", aten.elu.default: "ELU",  # own output scale too (ELU: alpha 1)
    aten.clamp.default: "RELU",  # (0, None); other bounds: MAXIMUM / MINIMUM, annotate_clamp
}


def int8_contract(target: object) -> str:
    """The int8 contract of the builtin an aten op becomes ("same" when it becomes none)."""
    name = LOWERS_TO[target]
    return BUILTINS.get(name).int8 if name else "same"


#: TFLite requires the same scale and zero point on input and output
SHARED_OPS = tuple(op for op in LOWERS_TO if int8_contract(op) == "same")
#: ops whose TFLite int8 kernel accepts one fixed output (scale, zero point)
FIXED_OUTPUT_OPS = {op: LOWERS_TO[op] for op in LOWERS_TO if int8_contract(op) == "fixed"}
#: ops with their own output quantization (TFLite requantizes in the kernel)
OWN_OUTPUT_OPS = tuple(op for op in LOWERS_TO if int8_contract(op) == "requantize")
#: ops whose builtin has no int8 kernel: left float (a float island: the converter runs them
#: between a DEQUANTIZE and a QUANTIZE), claimed by `annotate_float_islands`
FLOAT_OPS = tuple(op for op in LOWERS_TO if int8_contract(op) == "float")
CONCAT_OPS = (aten.cat.default, aten.concat.default)

Annotator = Callable[[GraphModule, Specs], None]
ANNOTATORS: list[tuple[str, Annotator]] = []


def annotator(name: str) -> Callable[[Annotator], Annotator]:
    """Register an annotator; registration order is application order."""
    def register(fn: Annotator) -> Annotator:
        ANNOTATORS.append((name, fn))
        return fn
    return register


#: meta flag of a node kept float (`edgecnn.quant.precision`): no annotator claims it, and it
#: carries no annotation at all (torchao's QAT conv-BN rewrite needs a full one or none)
FLOAT_KEY = "edgecnn_keep_float"
#: meta flag of a node left float because its op has no int8 TFLite kernel (`FLOAT_OPS`)
FLOAT_ISLAND_KEY = "edgecnn_float_island"
#: meta flag of a node the user moved to 16x8 (`edgecnn.quant.precision.mark_int16`): the
#: annotators claim it as any other, then `annotate_int16` makes its activations int16
INT16_KEY = "edgecnn_int16"


def is_annotated(node: Node) -> bool:
    """Claimed: annotated, or kept float."""
    if node.meta.get(FLOAT_KEY):
        return True
    annotation = node.meta.get(KEY)
    return annotation is not None and annotation._annotated


def annotate(node: Node, inputs: dict[Node, QuantizationSpecBase | None] | None = None,
             output: QuantizationSpecBase | None = None) -> None:
    node.meta[KEY] = QuantizationAnnotation(input_qspec_map=dict(inputs or {}),
                                            output_qspec=output, _annotated=True)


def mark(nodes: list[Node]) -> None:
    """Claim pattern-internal nodes (BN, a fused activation's producer): no quantization."""
    for node in nodes:
        if not is_annotated(node):
            annotate(node)


def candidates(gm: GraphModule, targets: tuple) -> list[Node]:
    return [n for n in gm.graph.nodes if calls(n, targets) and not is_annotated(n)]


def sole_user(node: Node) -> Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def is_fusable_activation(node: Node | None) -> bool:
    if calls(node, RELU_OPS + RELU6_OPS):
        return True
    if calls(node, HARDTANH_OPS):
        low = float(node.args[1]) if len(node.args) > 1 else -1.0
        high = float(node.args[2]) if len(node.args) > 2 else 1.0
        return (low, high) in FUSED_HARDTANH_BOUNDS
    if calls(node, CLAMP_OPS):
        return clamp_bounds(node) in FUSED_CLAMP_BOUNDS
    return False


def clamp_bounds(node: Node) -> tuple[float | None, float | None]:
    """A clamp node's (min, max), None for an open bound."""
    bounds = [*node.args[1:3], None, None][:2]
    bounds = [node.kwargs.get(k, b) for k, b in zip(("min", "max"), bounds, strict=True)]
    return tuple(None if b is None else float(b) for b in bounds)


def fuse_activation(node: Node) -> tuple[Node, list[Node]]:
    """The pattern's output: `node`'s sole-user fused activation if any, else `node`."""
    user = sole_user(node)
    if user is not None and is_fusable_activation(user) and not is_annotated(user):
        return user, [user]
    return node, []


def weighted_op(node: Node, specs: Specs) -> dict[Node, QuantizationSpecBase]:
    """Input map of conv / linear: activation and per-channel weight.

    The bias stays float through convert; `graph.add_int32_biases` makes it int32.
    """
    return {node.args[0]: specs.activation, node.args[1]: specs.weight}


@annotator("conv_bn_act")
def annotate_conv_bn_act(gm: GraphModule, specs: Specs) -> None:
    """conv [+ batch_norm] [+ relu/relu6]: one quantization point, after the last op.

    PTQ folds BN into the conv before annotation; QAT keeps the BN node, which
    torchao then rewrites into the simulated fold (weight scaled by gamma / std).
    """
    for conv in candidates(gm, CONV_OPS):
        chain = [conv]
        bn = sole_user(conv)
        if calls(bn, BATCH_NORM_OPS) and not is_annotated(bn):
            chain.append(bn)
        out, fused = fuse_activation(chain[-1])
        chain += fused
        annotate(conv, weighted_op(conv, specs))
        mark(chain[1:-1])
        if out is conv:
            conv.meta[KEY].output_qspec = specs.activation
        else:
            annotate(out, output=specs.activation)


CONV_TRANSPOSE_OPS = (aten.conv_transpose2d.input,)


@annotator("conv_transpose_act")
def annotate_conv_transpose_act(gm: GraphModule, specs: Specs) -> None:
    """conv_transpose2d [+ relu/relu6] (TFLite TRANSPOSE_CONV fuses them): per-channel
    weights along axis 1, the output channels of its [Cin, Cout, kH, kW] weight."""
    weight = dataclasses.replace(specs.weight, ch_axis=1)
    for node in candidates(gm, CONV_TRANSPOSE_OPS):
        out, _ = fuse_activation(node)
        annotate(node, {node.args[0]: specs.activation, node.args[1]: weight})
        if out is node:
            node.meta[KEY].output_qspec = specs.activation
        else:
            annotate(out, output=specs.activation)


@annotator("linear_act")
def annotate_linear_act(gm: GraphModule, specs: Specs) -> None:
    """linear [+ relu/relu6]: per-channel weight (axis 0, the output features)."""
    for linear in candidates(gm, LINEAR_OPS):
        out, _ = fuse_activation(linear)
        annotate(linear, weighted_op(linear, specs))
        if out is linear:
            linear.meta[KEY].output_qspec = specs.activation
        else:
            annotate(out, output=specs.activation)


def annotate_binary(gm: GraphModule, specs: Specs, targets: tuple,
                    scalar_only: bool = False) -> None:
    """Two tensors, or a tensor and a Python number (an int8 op with a constant operand):
    the tensor input(s) and the output quantized (with a fused relu when one follows)."""
    for node in candidates(gm, targets):
        inputs = [a for a in node.args[:2] if isinstance(a, Node)]
        scalars = [a for a in node.args[:2] if isinstance(a, (int, float))]
        if not (len(inputs) == 2 and not scalar_only) and not (len(inputs) == 1 and scalars):
            continue  # left to validate() to report
        out, _ = fuse_activation(node)
        annotate(node, {a: specs.activation for a in inputs})
        if out is node:
            node.meta[KEY].output_qspec = specs.activation
        else:
            annotate(out, output=specs.activation)


@annotator("add_act")
def annotate_add_act(gm: GraphModule, specs: Specs) -> None:
    """Residual add [+ relu]: both inputs and the output quantized."""
    annotate_binary(gm, specs, ADD_OPS)


@annotator("mul")
def annotate_mul(gm: GraphModule, specs: Specs) -> None:
    """Tensor x tensor (squeeze-excite gate, SiLU as x * sigmoid(x)), or x constant."""
    annotate_binary(gm, specs, MUL_OPS)


MATMUL_OPS = (aten.matmul.default, aten.bmm.default)


@annotator("matmul")
def annotate_matmul(gm: GraphModule, specs: Specs) -> None:
    """A product of two activations (attention pooling; BATCH_MATMUL): both inputs and
    the output quantized, each with its own parameters. (A matmul by a parameter is a
    linear layer's job.)"""
    for node in candidates(gm, MATMUL_OPS):
        inputs = [a for a in node.args[:2] if isinstance(a, Node)]
        if len(inputs) == 2 and all(a.op != "get_attr" for a in inputs):
            annotate(node, {a: specs.activation for a in inputs}, specs.activation)


@annotator("scalar_arithmetic")
def annotate_scalar_arithmetic(gm: GraphModule, specs: Specs) -> None:
    """x - c, x / c with a Python number c: SUB / MUL by a constant, own output. (A tensor
    divisor has no int8 TFLite kernel: left float, and reported.)"""
    annotate_binary(gm, specs, SCALAR_OPS, scalar_only=True)


def is_global_pool(node: Node) -> bool:
    """True for a mean / adaptive average pool that reduces H and W to 1x1."""
    if node.target != aten.adaptive_avg_pool2d.default:
        return True
    size = node.args[1]
    return all(int(v) == 1 for v in (size if isinstance(size, (list, tuple)) else [size]))


@annotator("mean")
def annotate_mean(gm: GraphModule, specs: Specs) -> None:
    """Global average pool / mean: own output quantization (TFLite MEAN requantizes).

    A non-global adaptive pool (output (1, 4) of an 8x8 map) exports as ONNX
    AveragePool, and TFLite's AVERAGE_POOL_2D needs the same scale in and out:
    it shares its input's quantization.
    """
    for node in candidates(gm, MEAN_OPS):
        x = node.args[0]
        if is_global_pool(node):
            annotate(node, {x: specs.activation}, specs.activation)
        else:
            annotate(node, {x: specs.activation}, SharedQuantizationSpec((x, node)))


@annotator("fixed_output")
def annotate_fixed_output(gm: GraphModule, specs: Specs) -> None:
    """sigmoid, softmax, log_softmax, tanh: the fixed output quantization of the TFLite
    kernel that runs them (LOGISTIC / SOFTMAX 1/256 and -128, LOG_SOFTMAX 16/256 and 127,
    TANH 1/128 and 0, for int8; the builtin records of `export.tflite.builtins`)."""
    for node in candidates(gm, tuple(FIXED_OUTPUT_OPS)):
        annotate(node, {node.args[0]: specs.activation}, specs.fixed[FIXED_OUTPUT_OPS[node.target]])


@annotator("clamp")
def annotate_clamp(gm: GraphModule, specs: Specs) -> None:
    """clamp with bounds no activation builtin has (clamp(min=0.5), clamp(-2, 2)): the
    converter's MAXIMUM / MINIMUM with constants (`clip_builtins`), which copy the winner,
    so the output shares the input's quantization and the int8 ONNX and the .tflite clip on
    one grid, exactly. Fusable bounds are the conv / own-output annotators'."""
    for node in candidates(gm, CLAMP_OPS):
        if all(BUILTINS.get(b).int8 == "same" for b in clip_builtins(*clamp_bounds(node))):
            x = node.args[0]
            annotate(node, {x: specs.activation}, SharedQuantizationSpec((x, node)))


@annotator("own_output")
def annotate_own_output(gm: GraphModule, specs: Specs) -> None:
    """hardswish, and relu/relu6 not fused into a producer: input and output quantized."""
    for node in candidates(gm, OWN_OUTPUT_OPS):
        annotate(node, {node.args[0]: specs.activation}, specs.activation)


SPLIT_OPS = (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
#: ops whose float outputs are read by getitem: split's pieces, a max's values (its indices
#: are integers, not quantized)
TUPLE_OPS = SPLIT_OPS + (aten.unbind.int, aten.max.dim, aten.adaptive_max_pool2d.default)


#: x ** c with a Python number c: its builtin depends on c (`annotate_pow`)
POW_OPS = (aten.pow.Tensor_Scalar,)


def is_float_island(node: Node) -> bool:
    """True for a node whose TFLite builtin has no int8 kernel: a `FLOAT_OPS` op (but not a
    division by a Python number: a MUL), or x ** c whose exponent's builtin
    (`export.tflite.ops.elementwise.pow_builtin`: MUL(x, x) for 2, SQRT for 0.5, else POW)
    has none."""
    if calls(node, POW_OPS):
        exponent = node.args[1]
        builtin = pow_builtin(float(exponent) if isinstance(exponent, (int, float)) else None)
        return BUILTINS.get(builtin).int8 == "float"
    if node.target == aten.div.Tensor and not isinstance(node.args[1], Node):
        return False
    return calls(node, FLOAT_OPS)


@annotator("pow")
def annotate_pow(gm: GraphModule, specs: Specs) -> None:
    """x ** c, c a Python number: a float island when its builtin has no int8 kernel
    (`is_float_island`), as `annotate_float_islands` leaves one; else (x ** 2, MUL(x, x))
    input and output quantized, own output."""
    for node in candidates(gm, POW_OPS):
        if is_float_island(node):
            node.meta[FLOAT_KEY] = node.meta[FLOAT_ISLAND_KEY] = True
        else:
            annotate(node, {node.args[0]: specs.activation}, specs.activation)


@annotator("float_islands")
def annotate_float_islands(gm: GraphModule, specs: Specs) -> None:
    """Ops whose TFLite builtin has no int8 kernel (`FLOAT_OPS`: layer / group norm, a
    division by a tensor, sqrt, reciprocal, pow) stay float, as `--keep-float` keeps a
    layer: no annotation, their int8 producers' outputs dequantized, their output quantized
    on the edges of their int8 readers. Runs after `scalar_arithmetic`, which claims a
    division by a number."""
    for node in candidates(gm, FLOAT_OPS):
        node.meta[FLOAT_KEY] = node.meta[FLOAT_ISLAND_KEY] = True


@annotator("split")
def annotate_split(gm: GraphModule, specs: Specs) -> None:
    """split / chunk (ShuffleNetV2's channel split), unbind (attention's q, k, v), max over
    dims / adaptive max pool (CBAM): the input quantized, and each float piece (a getitem
    of the tuple) shares the input's quantization, as TFLite SPLIT, STRIDED_SLICE and
    REDUCE_MAX copy; a max's indices are not quantized."""
    for node in candidates(gm, TUPLE_OPS):
        x = node.args[0]
        annotate(node, {x: specs.activation})
        for piece in node.users:
            value = piece.meta.get("val")
            if value is None or value.dtype.is_floating_point:
                annotate(piece, output=SharedQuantizationSpec((x, node)))
            else:
                mark([piece])


@annotator("shared")
def annotate_shared(gm: GraphModule, specs: Specs) -> None:
    """max pool, reshape/flatten, dropout...: output shares the input's quantization."""
    for node in candidates(gm, SHARED_OPS):
        x = node.args[0]
        annotate(node, {x: specs.activation}, SharedQuantizationSpec((x, node)))


@annotator("concat")
def annotate_concat(gm: GraphModule, specs: Specs) -> None:
    """concat: every input and the output share one quantization."""
    for node in candidates(gm, CONCAT_OPS):
        inputs = [a for a in node.args[0] if isinstance(a, Node)]
        first = (inputs[0], node)
        shared = SharedQuantizationSpec(first)
        annotate(node, {a: specs.activation if i == 0 else shared for i, a in enumerate(inputs)},
                 shared)


MAX_MIN_OPS = (aten.maximum.default, aten.minimum.default)
#: constant-valued tensors shaped like an activation (maximum(x, zeros_like(x))): the
#: converter folds them to constants, quantized on the max's grid
CONSTANT_LIKE_OPS = (aten.zeros_like.default, aten.ones_like.default, aten.full_like.default)


@annotator("max_min")
def annotate_max_min(gm: GraphModule, specs: Specs) -> None:
    """maximum / minimum of two tensors (TFLite MAXIMUM / MINIMUM copy the winner): both
    inputs and the output share the first input's quantization, as concat's do; a
    zeros_like / full_like operand is claimed with them (a constant in the ONNX graph)."""
    for node in candidates(gm, MAX_MIN_OPS):
        inputs = [a for a in node.args[:2] if isinstance(a, Node)]
        if len(inputs) != 2:
            continue
        shared = SharedQuantizationSpec((inputs[0], node))
        annotate(node, {inputs[0]: specs.activation, inputs[1]: shared}, shared)
        mark([a for a in inputs if calls(a, CONSTANT_LIKE_OPS)])


#: aten op -> the TFLite builtin it becomes, for the ops the pattern annotators claim (the
#: single-input ones are `LOWERS_TO`); a global mean / adaptive pool becomes MEAN, a
#: non-global adaptive pool AVERAGE_POOL_2D (both have 16x8 kernels), a division by a
#: number MUL by its reciprocal
PATTERN_BUILTINS: dict[object, str] = {
    **{op: "CONV_2D" for op in CONV_OPS}, **{op: "FULLY_CONNECTED" for op in LINEAR_OPS},
    **{op: "TRANSPOSE_CONV" for op in (aten.conv_transpose2d.input,)},
    **{op: "ADD" for op in ADD_OPS}, **{op: "MUL" for op in MUL_OPS},
    aten.sub.Tensor: "SUB", aten.div.Tensor: "MUL",
    **{op: "MEAN" for op in MEAN_OPS}, **{op: "CONCATENATION" for op in CONCAT_OPS},
    aten.matmul.default: "BATCH_MATMUL", aten.bmm.default: "BATCH_MATMUL",
    aten.maximum.default: "MAXIMUM", aten.minimum.default: "MINIMUM",
}


def builtin_of(target: object) -> str | None:
    """The TFLite builtin an aten op becomes (None: nothing, or unknown)."""
    if target in PATTERN_BUILTINS:
        return PATTERN_BUILTINS[target]
    return LOWERS_TO.get(target)


def _has_int16_kernel(target: object) -> bool:
    name = builtin_of(target)
    return name is None or "int16" in BUILTINS.get(name).versions


#: aten ops an int16 (16x8) layer may hold: those whose TFLite builtin has an int16 version
#: in its record (`export.tflite.builtins`: LiteRT and tflite-runtime 2.14 both run the
#: kernel, measured), and the ops that become no builtin (dropout, clone); a conv / linear
#: takes its BN and fused activation along. Derived from the records: an int16 version
#: added there makes the op selectable here.
INT16_OPS = tuple(op for op in dict.fromkeys([*PATTERN_BUILTINS, *LOWERS_TO])
                  if _has_int16_kernel(op))


@annotator("int16")
def annotate_int16(gm: GraphModule, specs: Specs) -> None:
    """Nodes marked int16 (`precision.mark_int16`) take int16 activation specs on their
    input edges and output (TFLite 16x8: symmetric, zero point 0); weights stay int8; a
    fixed int8 output (sigmoid) takes its builtin's fixed int16 one (`Specs.fixed16`).
    Shared outputs (pools, reshapes, concat) follow their input edge, so they are int16 too.

    Raises ParameterError (int16) naming the node for an op outside `INT16_OPS` (its TFLite builtin
    has no 16x8 kernel edgecnn writes) or left float (no int8 / int16 kernel), listing the
    builtins that have one (and the 16x8 kernels edgecnn does not write, with why).
    """
    from edgecnn.errors import ParameterError
    from edgecnn.export.tflite.builtins import int16_kernels_text

    fixed = {id(spec): name for name, spec in specs.fixed.items()}
    for node in gm.graph.nodes:
        if not node.meta.get(INT16_KEY):
            continue
        island = node.meta.get(FLOAT_ISLAND_KEY)
        if node.op != "call_function" or node.target not in INT16_OPS or island:
            builtin = builtin_of(node.target) if node.op == "call_function" else None
            raise ParameterError(
                "int16", f"selects node {node.name!r} ({node.target}, TFLite "
                f"{builtin or 'no builtin'}), which has no 16x8 (int16 activation) kernel "
                f"edgecnn writes{' (left float: no int8 kernel either)' if island else ''}; "
                f"{int16_kernels_text()}")
        annotation = node.meta.get(KEY)
        if annotation is None:
            continue
        for arg, spec in list(annotation.input_qspec_map.items()):
            if spec is specs.activation:
                annotation.input_qspec_map[arg] = specs.activation16
        if annotation.output_qspec is specs.activation:
            annotation.output_qspec = specs.activation16
        elif id(annotation.output_qspec) in fixed:
            annotation.output_qspec = specs.fixed16[fixed[id(annotation.output_qspec)]]


HARDSWISH_OPS = (aten.hardswish.default,)


@annotator("hardswish_input")
def annotate_hardswish_inputs(gm: GraphModule, specs: Specs) -> None:
    """The int8 tensor a hard-swish reads takes `Specs.hardswish_input`: its scale raised to
    3 / n (`qmath.hardswish_input_scale`), on which the TFLite lowering's gate is exact and
    the lowered chain rounds once, as onnxruntime does. It is the producer's output spec
    (so every reader shares it), or the edge's own when no annotated op produces it (the
    model input). A producer with a shared or fixed output keeps it (the converter then
    rounds the gate, `export.tflite.ops.elementwise.lower_hardswish`). After `int16`: a
    16x8 producer keeps its int16 spec."""
    for node in gm.graph.nodes:
        annotation = node.meta.get(KEY)
        if not calls(node, HARDSWISH_OPS) or annotation is None or not node.args:
            continue
        x = node.args[0]
        producer = x.meta.get(KEY)
        if producer is not None and producer.output_qspec is specs.activation:
            producer.output_qspec = specs.hardswish_input
        elif producer is None and annotation.input_qspec_map.get(x) is specs.activation:
            annotation.input_qspec_map[x] = specs.hardswish_input


def output_dtype(node: Node) -> torch.dtype | None:
    """The dtype of `node`'s annotated output, following shared specs to their source."""
    seen = set()
    spec = node.meta[KEY].output_qspec if node.meta.get(KEY) else None
    while isinstance(spec, SharedQuantizationSpec) and id(spec) not in seen:
        seen.add(id(spec))
        source = spec.edge_or_node
        if isinstance(source, Node):
            spec = source.meta[KEY].output_qspec if source.meta.get(KEY) else None
        else:
            arg, user = source
            spec = user.meta[KEY].input_qspec_map.get(arg) if user.meta.get(KEY) else None
    return getattr(spec, "dtype", None)


@annotator("share_with_producers")
def share_with_producers(gm: GraphModule, specs: Specs) -> None:
    """Point activation input edges at their producer's output quantization.

    torchao shares implicitly only between equal specs; a fixed (sigmoid) or
    shared (max pool) producer would otherwise get a second, requantizing Q/DQ.
    An edge between an int8 and an int16 tensor keeps its own spec: that is the
    requantization (int8 -> int16 or back) the two precisions need.
    """
    for node in gm.graph.nodes:
        annotation = node.meta.get(KEY)
        if annotation is None:
            continue
        for arg, spec in list(annotation.input_qspec_map.items()):
            producer = arg.meta.get(KEY)
            if ((spec is specs.activation or spec is specs.activation16)
                    and producer is not None and producer.output_qspec
                    and output_dtype(arg) in (None, spec.dtype)):
                annotation.input_qspec_map[arg] = SharedQuantizationSpec(arg)


#: ops that compute nothing on the activation path and need no quantization
PASSTHROUGH = (operator.getitem, aten.sym_size.int)


#: what a node computing on shapes, not activations, writes: a size read from the dynamic
#: batch and the arithmetic on it (`x.reshape(n * 2, ...)`: operator.mul of a SymInt)
SHAPE_VALUES = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)


def unannotated(gm: GraphModule) -> list[Node]:
    """call_function nodes on the activation path (downstream of the inputs, writing a
    tensor: shape arithmetic is not on it, `SHAPE_VALUES`) not quantized."""
    on_path: set[Node] = {n for n in gm.graph.nodes if n.op == "placeholder"}
    missing = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or isinstance(node.meta.get("val"), SHAPE_VALUES):
            continue
        if not any(a in on_path for a in node.all_input_nodes):
            continue
        on_path.add(node)
        if not is_annotated(node) and node.target not in PASSTHROUGH:
            missing.append(node)
    return missing


def known_ops() -> list[str]:
    tables = (CONV_OPS, CONV_TRANSPOSE_OPS, LINEAR_OPS, BATCH_NORM_OPS, ADD_OPS, MUL_OPS,
              MATMUL_OPS, SCALAR_OPS, MEAN_OPS, MAX_MIN_OPS,
              tuple(FIXED_OUTPUT_OPS), OWN_OUTPUT_OPS, SHARED_OPS, CONCAT_OPS, FLOAT_OPS, POW_OPS,
              (aten.silu.default, aten.conv1d.padding, aten.conv2d.padding))
    return sorted({str(op) for table in tables for op in table})
