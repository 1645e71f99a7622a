"""Normalization: inference BatchNormalization that no convolution absorbed; Layer- and
InstanceNormalization (GroupNorm's export) as their float decomposition."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Quant, Tensor
from edgecnn.export.tflite.layouts import norm_layout, normalized_axes
from edgecnn.export.tflite.ops.base import Lowering, register
from edgecnn.qmath import quantize_symmetric


@register("BatchNormalization")
def lower_batchnormalization(ctx: Lowering, *, epsilon: float = 1e-5, momentum: float = 0.9,
                             training_mode: int = 0) -> None:
    """y = (x - mean) / sqrt(var + epsilon) * scale + B, per channel, on an NHWC tensor ->
    a 1x1 DEPTHWISE_CONV_2D with weights scale / sqrt(var + epsilon) and bias
    B - mean x weights (a pre-activation ResNet's BN on a residual sum).

    One op in float and int8 alike; int8 weights are symmetric per channel (made here,
    as the quantizer would) and the int32 bias is made by `quantize_biases`.
    """
    if training_mode:
        raise ctx.fail("training_mode=1 is not supported (export in eval mode)")
    x, y = ctx.input(0), ctx.output()
    if x.rank != 4:
        raise ctx.fail(f"only rank-4 (NCHW) inputs are supported, got rank {x.rank}")
    params = []
    for index, name in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")):
        tensor = ctx.input(index)
        if tensor is None or not tensor.is_const:
            raise ctx.fail(f"{name} must be a constant")
        data = tensor.data if tensor.quant is None else tensor.quant.dequantize(tensor.data)
        params.append(np.asarray(data, np.float64).reshape(-1))
    scale, bias, mean, var = params
    multiplier = scale / np.sqrt(var + epsilon)
    weights = multiplier.astype(np.float32).reshape(1, 1, 1, -1)
    if x.quant is not None:
        q, w_scale = quantize_symmetric(weights, 3)
        w = ctx.graph.add_const(f"{ctx.op.name}_weights", q,
                                quant=Quant(w_scale, np.zeros(w_scale.size, np.int64), 3))
    else:
        w = ctx.graph.add_const(f"{ctx.op.name}_weights", weights)
    b = ctx.graph.add_const(f"{ctx.op.name}_bias", (bias - mean * multiplier).astype(np.float32))
    ctx.emit("DEPTHWISE_CONV_2D", [x.name, w, b], [y.name], padding="VALID", stride_h=1,
             stride_w=1, dilation_h_factor=1, dilation_w_factor=1, depth_multiplier=1,
             fused_activation_function="NONE")


def _normalize(ctx: Lowering, axes: list[int], epsilon: float) -> None:
    """y = (x - mean) / sqrt(var + epsilon) * scale + bias, mean and (biased) variance over
    `axes` -> `_standardize`'s chain, then MUL, ADD by scale and bias (inputs 1 and 2,
    broadcast against x; a scale of ones / bias of zeros is skipped), all float32."""
    x, y = ctx.input(0), ctx.output()
    affine = [(builtin, ctx.input(index)) for index, builtin in ((1, "MUL"), (2, "ADD"))
              if ctx.input(index) is not None]
    _scale_shift(ctx, _standardize(ctx, x.name, x.shape, axes, epsilon,
                                   None if _effective(affine) else y.name), affine, y.name)


def _standardize(ctx: Lowering, x: str, shape: tuple[int, ...], axes: list[int],
                 epsilon: float, out: str | None) -> str:
    """(x - mean) / sqrt(var + epsilon), mean and (biased) variance over `axes` of the
    tensor `x` of `shape` -> MEAN, SUB, MUL, MEAN, ADD, SQRT, DIV, all float32 (TFLite has
    no normalization builtin; SQRT and DIV have no int8 kernel, so in a QDQ model the chain
    is a float island between a DEQUANTIZE and a QUANTIZE, `passes.islands`). Writes `out`
    (a new float tensor when None); returns its name."""
    y = ctx.output()
    reduced = tuple(1 if i in axes else d for i, d in enumerate(shape))

    def temp(hint: str, shape: tuple[int, ...] = shape) -> str:
        return ctx.graph.add_tensor(f"{y.name}_{hint}", shape, np.float32)

    axes_name = ctx.int32("axes", axes)
    mean, centred, squared, var = temp("mean", reduced), temp("centred"), temp("squared"), \
        temp("var", reduced)
    ctx.emit("MEAN", [x, axes_name], [mean], keep_dims=True)
    ctx.emit("SUB", [x, mean], [centred], fused_activation_function="NONE")
    ctx.emit("MUL", [centred, centred], [squared], fused_activation_function="NONE")
    ctx.emit("MEAN", [squared, axes_name], [var], keep_dims=True)
    shifted, std = temp("var_eps", reduced), temp("std", reduced)
    ctx.emit("ADD", [var, ctx.graph.add_const(f"{ctx.op.name}_epsilon", np.float32(epsilon))],
             [shifted], fused_activation_function="NONE")
    ctx.emit("SQRT", [shifted], [std])
    out = out or temp("normalized")
    ctx.emit("DIV", [centred, std], [out], fused_activation_function="NONE")
    return out


def _effective(affine: list[tuple[str, Tensor | np.ndarray]]) -> list:
    """The (builtin, operand) steps of an affine that change values: a constant scale of
    ones (MUL) or bias of zeros (ADD) is dropped."""
    identity = {"MUL": 1.0, "ADD": 0.0}
    return [(builtin, operand) for builtin, operand in affine
            if not (isinstance(operand, np.ndarray) and np.all(operand == identity[builtin]))
            and not (isinstance(operand, Tensor) and operand.is_const
                     and np.all(_values(operand) == identity[builtin]))]


def _scale_shift(ctx: Lowering, source: str, affine: list[tuple[str, Tensor | np.ndarray]],
                 out: str) -> None:
    """`source` * scale + bias -> MUL, ADD (the steps of `_effective`), the last writing
    `out`; an operand is a tensor (a constant becomes float32) or float values."""
    steps = _effective(affine)
    for k, (builtin, operand) in enumerate(steps):
        target = out if k == len(steps) - 1 else \
            ctx.graph.add_tensor(f"{out}_{builtin.lower()}", ctx.graph.tensor(source).shape,
                                 np.float32)
        if isinstance(operand, np.ndarray):
            name = ctx.graph.add_const(f"{ctx.op.name}_{builtin.lower()}",
                                       operand.astype(np.float32))
        elif operand.is_const:
            name = ctx.graph.add_const(f"{operand.name}_f32", _values(operand).astype(np.float32))
        else:
            name = operand.name
        ctx.emit(builtin, [source, name], [target], fused_activation_function="NONE")
        source = target


def _values(tensor) -> np.ndarray:
    return tensor.data if tensor.quant is None else tensor.quant.dequantize(tensor.data)


@register("LayerNormalization", layout=norm_layout)
def lower_layernormalization(ctx: Lowering, *, axis: int = -1, epsilon: float = 1e-5,
                             stash_type: int = 1, axes: list[int] | None = None) -> None:
    """Normalize over axes `axis` .. rank - 1 (`axes`, when set by the layout pass or the
    channels-last fold: those axes of the stored tensor), then scale (input 1) and bias
    (input 2) -> the float chain of `_normalize` (a float island in an int8 model)."""
    x = ctx.input(0)
    if stash_type != 1:
        raise ctx.fail(f"stash_type={stash_type} is not supported (float32 statistics only)")
    _normalize(ctx, normalized_axes(ctx.op, x.rank), epsilon)


@register("InstanceNormalization", layout=norm_layout)
def lower_instancenormalization(ctx: Lowering, *, epsilon: float = 1e-5,
                                axes: list[int] | None = None) -> None:
    """Normalize each (sample, channel) over axes 2 .. rank - 1, then scale and bias per
    channel (inputs 1, 2) -> the float chain of `_normalize`. torch.onnx writes
    GroupNorm(G, C) as Reshape [N, G, -1] -> InstanceNormalization -> Reshape back
    (`passes.norms.fuse_group_norm` makes G = 1 one LayerNormalization-like op)."""
    x = ctx.input(0)
    for index in (1, 2):
        tensor = ctx.input(index)
        if tensor is None or not tensor.is_const:
            raise ctx.fail("scale and B must be constants")
    if "axes" not in ctx.op.attrs and x.rank == 3:
        # [N, G, L]: scale / B per group broadcast as [G, 1]
        for index in (1, 2):
            tensor = ctx.input(index)
            ctx.op.inputs[index] = ctx.graph.add_const(
                f"{tensor.name}_per_channel", _values(tensor).astype(np.float32).reshape(-1, 1))
    _normalize(ctx, normalized_axes(ctx.op, x.rank), epsilon)


@register("GroupNormalization")
def lower_groupnormalization(ctx: Lowering, *, num_groups: int, epsilon: float = 1e-5,
                             stash_type: int = 1) -> None:
    """The C channels in `num_groups` (G) groups of C / G consecutive channels, each
    (sample, group) normalized over its channels and positions, then scale and bias per
    channel (inputs 1, 2: [C], opset 21; onnx.checker refuses opset 18's per-group form) (Wu & He,
    "Group Normalization", 2018; what `passes.norms.fuse_group_norm` makes of torch.onnx's
    Reshape -> InstanceNormalization -> Reshape -> Mul -> Add).

    A rank-4 input is stored NHWC [N, H, W, C] here: G = 1 -> `_standardize` over H, W, C;
    G = C -> over H, W; else RESHAPE to [N, H*W, G, C / G] (the groups' channels stay
    consecutive in NHWC memory), the chain over axes 1 and 3, RESHAPE back. No TRANSPOSE
    either way; then MUL, ADD by the per-channel scale and bias along the last axis. Other
    ranks ([N, C, ...], not permuted): RESHAPE to [N, G, -1], axis 2, back, scale and bias
    as [C, 1, ...]. Float32 throughout: a float island in an int8 model (`passes.islands`).
    """
    x, y = ctx.input(0), ctx.output()
    if stash_type != 1:
        raise ctx.fail(f"stash_type={stash_type} is not supported (float32 statistics only)")
    if x.rank < 2:
        raise ctx.fail(f"a rank-{x.rank} input has no channel axis")
    channel_axis = 3 if x.rank == 4 else 1
    channels, groups = x.shape[channel_axis], int(num_groups)
    if groups < 1 or channels % groups:
        raise ctx.fail(f"num_groups={groups} does not divide the {channels} channels")
    affine = []
    for index, builtin in ((1, "MUL"), (2, "ADD")):
        tensor = ctx.input(index)
        if tensor is None or not tensor.is_const:
            raise ctx.fail("scale and bias must be constants")
        values = np.asarray(_values(tensor), np.float64).reshape(-1)
        if values.size != channels:
            raise ctx.fail(f"input {index} has {values.size} values, not one per channel "
                           f"({channels})")
        affine.append((builtin, values.reshape((-1,) + (1,) * (x.rank - 1 - channel_axis))))
    steps = _effective(affine)
    out = None if steps else y.name
    if groups == 1 or (groups == channels and x.rank == 4):
        axes = [a for a in range(1, x.rank) if groups == 1 or a != channel_axis]
        source = _standardize(ctx, x.name, x.shape, axes, epsilon, out)
    else:
        if x.rank == 4:
            grouped, axes = (x.shape[0], x.shape[1] * x.shape[2], groups, channels // groups), \
                [1, 3]
        else:
            grouped, axes = (x.shape[0], groups, int(np.prod(x.shape[1:])) // groups), [2]
        flat = ctx.like("grouped", x, grouped)
        ctx.emit("RESHAPE", [x.name, ctx.int32("grouped_shape", grouped)], [flat],
                 new_shape=list(grouped))
        normalized = _standardize(ctx, flat, grouped, axes, epsilon, None)
        source = out or ctx.graph.add_tensor(f"{y.name}_normalized", x.shape, np.float32)
        ctx.emit("RESHAPE", [normalized, ctx.int32("shape", list(x.shape))], [source],
                 new_shape=list(x.shape))
    _scale_shift(ctx, source, steps, y.name)
