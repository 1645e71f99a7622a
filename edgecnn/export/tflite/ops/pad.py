"""Pad (constant mode) -> PAD / PADV2."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.layouts import pad_layout
from edgecnn.export.tflite.ops.base import Lowering, register


def onnx_paddings(ctx: Lowering) -> list[tuple[int, int]]:
    """(begin, end) per axis of the input, from Pad's `pads` and optional `axes` inputs.

    ONNX pads are [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over `axes` (all
    axes when absent); the layout pass has already put them in the stored (NHWC) order.
    """
    rank = ctx.input(0).rank
    pads = ctx.const(1)
    if pads is None:
        raise ctx.fail("pads must be a constant")
    axes = ctx.const(3)
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise ctx.fail(f"{len(pads)} pads for {len(axes)} axes")
    pairs = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        pairs[axis] = (pads[i], pads[i + len(axes)])
    if any(p < 0 for pair in pairs for p in pair):
        raise ctx.fail(f"negative pads {pads} (cropping) are not supported")
    return pairs


def pad_value(ctx: Lowering) -> float:
    value = ctx.const(2)
    if ctx.input(2) is not None and value is None:
        raise ctx.fail("constant_value must be a constant")
    if value is None:
        return 0.0
    tensor = ctx.input(2)
    if tensor.quant is not None:
        value = tensor.quant.dequantize(np.asarray(value).reshape(-1))
    return float(np.asarray(value).reshape(-1)[0])


@register("Pad", layout=pad_layout)
def lower_pad(ctx: Lowering, *, mode: str = "constant") -> None:
    """Constant padding -> PAD (value 0; int8: the zero point, which is real 0) or PADV2
    (any other value; int8: quantized with the input's parameters, which the output
    shares). edge / reflect / wrap modes are not supported."""
    if mode != "constant":
        raise ctx.fail(f"mode {mode!r} is not supported (constant is)")
    x, y = ctx.input(0), ctx.output()
    paddings = ctx.int32("paddings", [list(pair) for pair in onnx_paddings(ctx)])
    value = pad_value(ctx)
    if value == 0.0:
        ctx.emit("PAD", [x.name, paddings], [y.name])
        return
    fill = ctx.graph.add_const(f"{ctx.op.name}_pad_value", np.asarray([value], np.float32))
    ctx.emit("PADV2", [x.name, paddings, fill], [y.name])
