"""Data movement: reshapes -> RESHAPE, Concat -> CONCATENATION."""

from __future__ import annotations

from edgecnn.export.tflite.ops.base import Lowering, register


def _reshape(ctx: Lowering) -> None:
    """RESHAPE to the output's static (stored-layout) shape; int8 keeps the input's scale."""
    x, y = ctx.input(0), ctx.output()
    shape = list(y.shape)
    ctx.emit("RESHAPE", [x.name, ctx.int32("shape", shape)], [y.name], new_shape=shape)


@register("Reshape")
def lower_reshape(ctx: Lowering, *, allowzero: int = 0) -> None:
    """Reshape to a static shape (shape inference resolves -1 and 0) -> RESHAPE."""
    _reshape(ctx)


@register("Flatten")
def lower_flatten(ctx: Lowering, *, axis: int = 1) -> None:
    """Flatten to 2-D at `axis` -> RESHAPE (the layout pass keeps NCHW element order)."""
    _reshape(ctx)


@register("Squeeze")
def lower_squeeze(ctx: Lowering, *, axes: list[int] | None = None) -> None:
    """Drop size-1 axes -> RESHAPE."""
    _reshape(ctx)


@register("Unsqueeze")
def lower_unsqueeze(ctx: Lowering, *, axes: list[int] | None = None) -> None:
    """Insert size-1 axes -> RESHAPE."""
    _reshape(ctx)


@register("Concat")
def lower_concat(ctx: Lowering, *, axis: int) -> None:
    """Join along `axis` (NHWC after the layout pass) -> CONCATENATION.

    int8: inputs and output share one scale; `align_same_scale` requantizes
    inputs that differ.
    """
    rank = ctx.output().rank
    ctx.emit("CONCATENATION", [ctx.operand(i) for i in range(len(ctx.op.inputs))],
             [ctx.output().name], axis=axis % rank, fused_activation_function="NONE")
