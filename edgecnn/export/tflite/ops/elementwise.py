"""Elementwise ops: binary arithmetic and activations."""

from __future__ import annotations

import math

from edgecnn.export.tflite.ops.base import Lowering, register


def _binary(ctx: Lowering, builtin: str) -> None:
    ctx.emit(builtin, [ctx.operand(0), ctx.operand(1)], [ctx.output().name],
             fused_activation_function="NONE")


@register("Add")
def lower_add(ctx: Lowering) -> None:
    """A + B with numpy broadcasting -> ADD. int8: inputs and output may differ in scale."""
    _binary(ctx, "ADD")


@register("Sub")
def lower_sub(ctx: Lowering) -> None:
    """A - B with numpy broadcasting -> SUB. int8: inputs and output may differ in scale."""
    _binary(ctx, "SUB")


@register("Mul")
def lower_mul(ctx: Lowering) -> None:
    """A * B with numpy broadcasting (squeeze-excite scales [N,1,1,C]) -> MUL."""
    _binary(ctx, "MUL")


def _unary(ctx: Lowering, builtin: str, **options) -> None:
    ctx.emit(builtin, [ctx.input(0).name], [ctx.output().name], **options)


@register("Relu")
def lower_relu(ctx: Lowering) -> None:
    """max(x, 0) -> RELU; the `fuse_activations` pass folds it into its producer when exact."""
    _unary(ctx, "RELU")


# (min, max) -> builtin; None is an open bound.
CLIP_BUILTINS = {(0.0, 6.0): "RELU6", (0.0, None): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}


@register("Clip")
def lower_clip(ctx: Lowering, *, min: float | None = None, max: float | None = None) -> None:
    """clip(x, min, max) for (0, 6), (0, inf) and (-1, 1) -> RELU6, RELU, RELU_N1_TO_1.

    Bounds come from constant inputs (opset >= 11) or attributes.
    """
    bounds = []
    for index, attr in ((1, min), (2, max)):
        tensor = ctx.input(index)
        if tensor is not None and (not tensor.is_const or tensor.data.size != 1):
            raise ctx.fail("clip bounds must be scalar constants")
        value = float(tensor.data.reshape(-1)[0]) if tensor is not None else attr
        bounds.append(None if value is None or math.isinf(value) else value)
    builtin = CLIP_BUILTINS.get(tuple(bounds))
    if builtin is None:
        raise ctx.fail(f"clip bounds {tuple(bounds)} are not supported; supported: "
                       f"{', '.join(str(b) for b in CLIP_BUILTINS)}")
    _unary(ctx, builtin)


@register("Sigmoid")
def lower_sigmoid(ctx: Lowering) -> None:
    """1 / (1 + exp(-x)) -> LOGISTIC. int8 output is (1/256, -128) (`fix_output_quant`)."""
    _unary(ctx, "LOGISTIC")


@register("Tanh")
def lower_tanh(ctx: Lowering) -> None:
    """tanh(x) -> TANH. int8 output is (1/128, 0) (`fix_output_quant`)."""
    _unary(ctx, "TANH")


@register("HardSwish")
def lower_hardswish(ctx: Lowering) -> None:
    """x * relu6(x + 3) / 6 -> HARD_SWISH. int8: input and output may differ in scale."""
    _unary(ctx, "HARD_SWISH")


def _last_axis(ctx: Lowering, axis: int) -> None:
    rank = ctx.input(0).rank
    if axis % rank != rank - 1:
        raise ctx.fail(f"{ctx.op.type} over axis {axis} of a rank-{rank} tensor; only the last "
                       f"axis is supported")


@register("Softmax")
def lower_softmax(ctx: Lowering, *, axis: int = -1) -> None:
    """softmax over the last axis -> SOFTMAX (beta 1). int8 output is (1/256, -128).

    The layout pass has already remapped `axis` to NHWC.
    """
    _last_axis(ctx, axis)
    _unary(ctx, "SOFTMAX", beta=1.0)


@register("LogSoftmax")
def lower_logsoftmax(ctx: Lowering, *, axis: int = -1) -> None:
    """log(softmax(x)) over the last axis -> LOG_SOFTMAX. int8 output is (16/256, 127)."""
    _last_axis(ctx, axis)
    _unary(ctx, "LOG_SOFTMAX")
