"""Data movement: reshapes -> RESHAPE, Concat -> CONCATENATION, Split, Transpose, Slice,
Gather."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.layouts import (
    axis_layout,
    check_perm,
    gather_layout,
    reshape_layout,
    slice_layout,
    transpose_layout,
)
from edgecnn.export.tflite.ops.base import Lowering, register


def _reshape(ctx: Lowering) -> None:
    """RESHAPE to the output's static (stored-layout) shape; int8 keeps the input's scale."""
    x, y = ctx.input(0), ctx.output()
    shape = list(y.shape)
    ctx.emit("RESHAPE", [x.name, ctx.int32("shape", shape)], [y.name], new_shape=shape)


@register("Reshape", layout=reshape_layout, propagates="both")
def lower_reshape(ctx: Lowering, *, allowzero: int = 0) -> None:
    """Reshape to a static shape (shape inference resolves -1 and 0) -> RESHAPE."""
    _reshape(ctx)


@register("Flatten", layout=reshape_layout, propagates="both")
def lower_flatten(ctx: Lowering, *, axis: int = 1) -> None:
    """Flatten to 2-D at `axis` -> RESHAPE (the layout pass keeps NCHW element order)."""
    _reshape(ctx)


@register("Squeeze", layout=reshape_layout, propagates="both")
def lower_squeeze(ctx: Lowering, *, axes: list[int] | None = None) -> None:
    """Drop size-1 axes -> RESHAPE."""
    _reshape(ctx)


@register("Unsqueeze", layout=reshape_layout, propagates="both")
def lower_unsqueeze(ctx: Lowering, *, axes: list[int] | None = None) -> None:
    """Insert size-1 axes -> RESHAPE."""
    _reshape(ctx)


@register("Concat", layout=axis_layout)
def lower_concat(ctx: Lowering, *, axis: int) -> None:
    """Join along `axis` (NHWC after the layout pass) -> CONCATENATION.

    int8: inputs and output share one scale; `align_same_scale` requantizes
    inputs that differ.
    """
    rank = ctx.output().rank
    ctx.emit("CONCATENATION", [ctx.operand(i) for i in range(len(ctx.op.inputs))],
             [ctx.output().name], axis=axis % rank, fused_activation_function="NONE")


@register("Split", layout=axis_layout, propagates="both")
def lower_split(ctx: Lowering, *, axis: int = 0, num_outputs: int | None = None) -> None:
    """Cut along `axis` (NHWC after the layout pass) into the outputs' sizes (the `split`
    input, or `num_outputs` equal parts) -> SPLIT when they are equal, else SPLIT_V.

    ShuffleNetV2's channel split (`x.chunk(2, dim=1)`) is one SPLIT, which XNNPACK runs
    for 2 to 4 equal outputs. int8: every output shares the input's parameters.
    """
    x = ctx.input(0)
    axis %= x.rank
    sizes = [ctx.output(i).shape[axis] for i in range(len(ctx.op.outputs))]
    outputs = [ctx.output(i).name for i in range(len(sizes))]
    dim = ctx.graph.add_const(f"{ctx.op.name}_axis", np.asarray(axis, np.int32))
    if len(set(sizes)) == 1:
        ctx.emit("SPLIT", [dim, x.name], outputs, num_splits=len(sizes))
    else:
        ctx.emit("SPLIT_V", [x.name, ctx.int32("sizes", sizes), dim], outputs,
                 num_splits=len(sizes))


@register("Transpose", layout=transpose_layout, propagates="both")
def lower_transpose(ctx: Lowering, *, perm: list[int] | None = None) -> None:
    """Permute axes -> TRANSPOSE (stored axes; the layout pass remapped `perm`), or RESHAPE
    when only size-1 axes move. int8: the output shares the input's parameters. `perm`
    has one entry per input axis (`check_perm`)."""
    x = ctx.input(0)
    perm = list(perm) if perm is not None else list(range(x.rank))[::-1]
    check_perm(ctx.op, perm, x.rank)
    moved = [axis for axis in perm if x.shape[axis] != 1]
    if moved == sorted(moved):  # only size-1 axes move: the element order stays
        _reshape(ctx)
        return
    ctx.emit("TRANSPOSE", [x.name, ctx.int32("perm", perm)], [ctx.output().name])


@register("Slice", layout=slice_layout, propagates="both")
def lower_slice(ctx: Lowering) -> None:
    """x[starts:ends:steps] over `axes` (constant inputs) -> STRIDED_SLICE over every axis.

    Starts and ends are clamped to the axis as ONNX does (negative values count from the
    end); steps must be positive. int8: the output shares the input's parameters.
    """
    x = ctx.input(0)
    starts, ends = ctx.const(1), ctx.const(2)
    axes, steps = ctx.const(3), ctx.const(4)
    if starts is None or ends is None or (ctx.input(3) and axes is None) or \
            (ctx.input(4) and steps is None):
        raise ctx.fail("starts, ends, axes and steps must be constants")
    axes = range(len(starts)) if axes is None else [int(a) % x.rank for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    begin, end, stride = [0] * x.rank, list(x.shape), [1] * x.rank
    for axis, start, stop, step in zip(axes, starts, ends, steps, strict=True):
        if step <= 0:
            raise ctx.fail(f"step {step} on axis {axis}: only positive steps are supported")
        size = x.shape[axis]
        begin[axis] = int(min(max(start + size if start < 0 else start, 0), size))
        end[axis] = int(min(max(stop + size if stop < 0 else stop, 0), size))
        stride[axis] = step
    ctx.emit("STRIDED_SLICE", [x.name, ctx.int32("begin", begin), ctx.int32("end", end),
                               ctx.int32("strides", stride)], [ctx.output().name],
             begin_mask=0, end_mask=0, ellipsis_mask=0, new_axis_mask=0, shrink_axis_mask=0)


@register("Gather", layout=gather_layout, propagates="both")
def lower_gather(ctx: Lowering, *, axis: int = 0) -> None:
    """x[i] along `axis` with a constant scalar index (torch's select: attention's qkv[0],
    a class token x[:, 0]; the axis dropped, shrink_axis_mask) or a one-element index (the
    axis kept) -> one STRIDED_SLICE. A negative index counts from the end. int8: the output
    shares the input's parameters. Raises EdgecnnError naming the node for any other index
    (an embedding lookup)."""
    x, index = ctx.input(0), ctx.const(1)
    if index is None or index.size != 1 or index.ndim > 1:
        raise ctx.fail("only a constant scalar or one-element index is supported "
                       "(torch's x[i] / select)")
    axis %= x.rank
    size, i = x.shape[axis], int(index.reshape(-1)[0])
    if not -size <= i < size:
        raise ctx.fail(f"index {i} is out of range for axis {axis} of size {size}")
    begin, end = [0] * x.rank, list(x.shape)
    begin[axis] = i % size
    end[axis] = begin[axis] + 1
    ctx.emit("STRIDED_SLICE", [x.name, ctx.int32("begin", begin), ctx.int32("end", end),
                               ctx.int32("strides", [1] * x.rank)], [ctx.output().name],
             begin_mask=0, end_mask=0, ellipsis_mask=0, new_axis_mask=0,
             shrink_axis_mask=(1 << axis) if ctx.output().rank < x.rank else 0)


@register("Expand")
def lower_expand(ctx: Lowering) -> None:
    """Expand read by broadcasting Add / Sub / Mul is dropped before lowering
    (`passes.constants.drop_broadcast_expands`); any other is refused, naming what reads it."""
    readers = [op.describe() for op in ctx.graph.consumers().get(ctx.output().name, [])]
    raise ctx.fail(f"an Expand is supported only where Add / Sub / Mul read it and broadcast "
                   f"its input themselves (with its input's quantization); read by "
                   f"{', '.join(readers) or 'the model output'}")
