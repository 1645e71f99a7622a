"""Normalization: inference BatchNormalization that no convolution absorbed; Layer- and
InstanceNormalization (GroupNorm's export) as their float decomposition."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Quant
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
    `axes` -> MEAN, SUB, MUL, MEAN, ADD, SQRT, DIV, MUL, ADD, all float32 (TFLite has no
    normalization builtin; SQRT and DIV have no int8 kernel, so in a QDQ model the chain
    is a float island between a DEQUANTIZE and a QUANTIZE, `passes.islands`). Scale and
    bias (inputs 1 and 2) broadcast against x; a scale of ones / bias of zeros is skipped.
    """
    x, y = ctx.input(0), ctx.output()
    reduced = tuple(1 if i in axes else d for i, d in enumerate(x.shape))

    def temp(hint: str, shape: tuple[int, ...] = x.shape) -> str:
        return ctx.graph.add_tensor(f"{y.name}_{hint}", shape, np.float32)

    axes_name = ctx.int32("axes", axes)
    mean, centred, squared, var = temp("mean", reduced), temp("centred"), temp("squared"), \
        temp("var", reduced)
    ctx.emit("MEAN", [x.name, axes_name], [mean], keep_dims=True)
    ctx.emit("SUB", [x.name, mean], [centred], fused_activation_function="NONE")
    ctx.emit("MUL", [centred, centred], [squared], fused_activation_function="NONE")
    ctx.emit("MEAN", [squared, axes_name], [var], keep_dims=True)
    shifted, std = temp("var_eps", reduced), temp("std", reduced)
    ctx.emit("ADD", [var, ctx.graph.add_const(f"{ctx.op.name}_epsilon", np.float32(epsilon))],
             [shifted], fused_activation_function="NONE")
    ctx.emit("SQRT", [shifted], [std])
    steps = [(index, builtin) for index, builtin, identity in ((1, "MUL", 1.0), (2, "ADD", 0.0))
             if ctx.input(index) is not None
             and not (ctx.input(index).is_const and np.all(_values(ctx.input(index)) == identity))]
    source = temp("normalized") if steps else y.name
    ctx.emit("DIV", [centred, std], [source], fused_activation_function="NONE")
    for k, (index, builtin) in enumerate(steps):
        out = y.name if k == len(steps) - 1 else temp(f"{builtin.lower()}")
        operand = ctx.input(index)
        if operand.is_const:
            operand_name = ctx.graph.add_const(f"{operand.name}_f32",
                                               _values(operand).astype(np.float32))
        else:
            operand_name = operand.name
        ctx.emit(builtin, [source, operand_name], [out], fused_activation_function="NONE")
        source = out


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
