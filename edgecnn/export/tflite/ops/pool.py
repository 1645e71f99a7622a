"""Pooling and reductions: MEAN, REDUCE_MAX, AVERAGE_POOL_2D, MAX_POOL_2D."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Tensor
from edgecnn.export.tflite.layouts import reduce_layout
from edgecnn.export.tflite.ops.base import Lowering, register
from edgecnn.export.tflite.ops.conv import pad_input, spatial_padding


def _mean(ctx: Lowering, axes: list[int], keep_dims: bool) -> None:
    """MEAN without keep_dims, then a RESHAPE that puts the reduced axes back.

    TFLite's optimized int8 kernel for a 4-D keep_dims mean over H and W adds
    half a step to every output (it rounds `x + 0.5`); the general kernel
    rounds correctly. `fold_reshapes` removes the RESHAPE when a reshape
    (Flatten before a classifier) follows anyway.
    """
    x, y = ctx.input(0), ctx.output()
    axes_name = ctx.int32("axes", axes)
    if not keep_dims:
        ctx.emit("MEAN", [x.name, axes_name], [y.name], keep_dims=False)
        return
    reduced = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    flat = ctx.like("mean", y, reduced)
    ctx.emit("MEAN", [x.name, axes_name], [flat], keep_dims=False)
    ctx.emit("RESHAPE", [flat, ctx.int32("shape", y.shape)], [y.name], new_shape=list(y.shape))


@register("GlobalAveragePool")
def lower_globalaveragepool(ctx: Lowering) -> None:
    """Mean over H and W of an NHWC tensor -> MEAN(axes [1, 2], keep_dims)."""
    if ctx.input(0).rank != 4:
        raise ctx.fail("only 2-D global pooling is supported")
    _mean(ctx, [1, 2], True)


@register("ReduceMean", layout=reduce_layout)
def lower_reducemean(ctx: Lowering, *, axes: list[int] | None = None, keepdims: int = 1,
                     noop_with_empty_axes: int = 0) -> None:
    """Mean over `axes` (NHWC after the layout pass) -> MEAN. int8 may rescale."""
    if noop_with_empty_axes and not axes:
        raise ctx.fail("noop_with_empty_axes with no axes is not supported")
    _mean(ctx, list(axes or []), bool(keepdims))


@register("ReduceMax", layout=reduce_layout, propagates="forward")
def lower_reducemax(ctx: Lowering, *, axes: list[int] | None = None, keepdims: int = 1,
                    noop_with_empty_axes: int = 0) -> None:
    """Max over `axes` (NHWC after the layout pass; CBAM's max over channels, a global
    max pool) -> REDUCE_MAX. int8: the kernel copies the largest value, so input and
    output share parameters (`align_same_scale` requantizes a QDQ output that differs)."""
    if noop_with_empty_axes and not axes:
        raise ctx.fail("noop_with_empty_axes with no axes is not supported")
    ctx.emit("REDUCE_MAX", [ctx.input(0).name, ctx.int32("axes", list(axes or []))],
             [ctx.output().name], keep_dims=bool(keepdims))


def _lowest(x: Tensor) -> float | None:
    """The pad value for max pooling; None (a plain PAD, which XNNPACK takes) when the
    int8 zero point already is the lowest value (a ReLU-ranged tensor)."""
    if x.quant is None:
        return float(np.finfo(np.float32).min)
    return None if int(x.quant.zero_point[0]) == -128 else -128


def _ceil_pads(in_hw, out_hw, kernel: list[int], strides: list[int],
               pads: list[int] | None) -> list[int]:
    """ceil_mode: the last window may run past the end; extend the end padding so that a
    VALID pool over the padded input has the ONNX output size (max pooling pads with the
    lowest value, so the overhang never wins)."""
    pads = list(pads or [0, 0, 0, 0])
    for i in range(2):
        short = (out_hw[i] - 1) * strides[i] + kernel[i] - (in_hw[i] + pads[i] + pads[i + 2])
        pads[i + 2] += max(short, 0)
    return pads


def _pool(ctx: Lowering, builtin: str, kernel_shape: list[int], strides: list[int] | None,
          pads: list[int] | None, dilations: list[int] | None, auto_pad: str, ceil_mode: int,
          fill: str) -> None:
    """`fill`: how padding SAME cannot express is made: "lowest" (PADV2 with the lowest
    value), "zero" (PAD; it counts in the average, so SAME is never used) or "none"."""
    x, y = ctx.input(0), ctx.output()
    if x.rank != 4 or len(kernel_shape) != 2:
        raise ctx.fail("only 2-D pooling is supported")
    if dilations and any(d != 1 for d in dilations):
        raise ctx.fail(f"dilations {dilations} are not supported")
    strides = list(strides or [1, 1])
    if ceil_mode and fill == "lowest":
        pads = _ceil_pads(x.shape[1:3], y.shape[1:3], kernel_shape, strides, pads)
    padding, explicit = spatial_padding(ctx, x, kernel_shape, strides, [1, 1], pads, auto_pad,
                                        allow_same=fill != "zero")
    source = x.name
    if explicit:
        if fill == "none":
            raise ctx.fail(f"padding {pads} with count_include_pad=0 is neither SAME nor VALID")
        source = pad_input(ctx, x, explicit, value=_lowest(x) if fill == "lowest" else None)
    padded_hw = ctx.graph.tensor(source).shape[1:3]
    expected = [
        -(-padded_hw[i] // strides[i]) if padding == "SAME"
        else (padded_hw[i] - kernel_shape[i]) // strides[i] + 1 for i in range(2)]
    if list(y.shape[1:3]) != expected:
        raise ctx.fail(f"output size {list(y.shape[1:3])} (ceil_mode={ceil_mode}) differs "
                       f"from TFLite's {expected}")
    ctx.emit(builtin, [source], [y.name], padding=padding, stride_h=strides[0],
             stride_w=strides[1], filter_height=kernel_shape[0], filter_width=kernel_shape[1],
             fused_activation_function="NONE")


@register("AveragePool")
def lower_averagepool(ctx: Lowering, *, kernel_shape: list[int], strides: list[int] | None = None,
                      pads: list[int] | None = None, dilations: list[int] | None = None,
                      auto_pad: str = "NOTSET", ceil_mode: int = 0,
                      count_include_pad: int = 0) -> None:
    """Average pooling, NHWC -> AVERAGE_POOL_2D (int8: same scale in and out).

    TFLite's SAME averages only the valid pixels (count_include_pad=0);
    padding counted in the average becomes an explicit zero PAD.
    """
    _pool(ctx, "AVERAGE_POOL_2D", kernel_shape, strides, pads, dilations, auto_pad, ceil_mode,
          "zero" if count_include_pad else "none")


@register("MaxPool", propagates="forward")
def lower_maxpool(ctx: Lowering, *, kernel_shape: list[int], strides: list[int] | None = None,
                  pads: list[int] | None = None, dilations: list[int] | None = None,
                  auto_pad: str = "NOTSET", ceil_mode: int = 0, storage_order: int = 0) -> None:
    """Max pooling, NHWC -> MAX_POOL_2D (int8: same scale in and out).

    Padding SAME cannot express becomes PADV2 with the lowest value (PAD when the
    int8 zero point is -128); `ceil_mode=1` (GoogLeNet, ShuffleNet, SqueezeNet) pads
    the overhang of the last window the same way.
    """
    if storage_order:
        raise ctx.fail("storage_order=1 is not supported")
    _pool(ctx, "MAX_POOL_2D", kernel_shape, strides, pads, dilations, auto_pad, ceil_mode,
          "lowest")
