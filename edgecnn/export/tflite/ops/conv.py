"""Conv -> CONV_2D / DEPTHWISE_CONV_2D, and the SAME / VALID / explicit-PAD decision."""

from __future__ import annotations

import math

import numpy as np

from edgecnn.export.tflite.graph import Tensor
from edgecnn.export.tflite.layouts import conv_layout
from edgecnn.export.tflite.ops.base import Lowering, register


def spatial_padding(ctx: Lowering, x: Tensor, kernel: list[int], strides: list[int],
                    dilations: list[int], pads: list[int] | None, auto_pad: str,
                    allow_same: bool = True) -> tuple[str, list[tuple[int, int]] | None]:
    """TFLite padding for an NHWC window op: ("SAME" | "VALID", explicit pads or None).

    ONNX pads are [top, left, bottom, right]. End padding no window reaches is
    dropped first; what is left either matches TFLite's SAME (the extra pixel
    at the end) or VALID, or needs explicit [(top, bottom), (left, right)]
    through a PAD op. `allow_same=False` forces explicit pads (padding that
    counts in an average).
    """
    in_hw = x.shape[1:3]
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            total = max((math.ceil(in_hw[i] / strides[i]) - 1) * strides[i] + eff[i] - in_hw[i], 0)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad != "NOTSET":
        raise ctx.fail(f"auto_pad={auto_pad!r} is not supported")
    pads = list(pads or [0, 0, 0, 0])
    same = True
    for i in range(2):
        begin, end = pads[i], pads[i + 2]
        out = (in_hw[i] + begin + end - eff[i]) // strides[i] + 1
        pads[i + 2] = min(end, max(0, (out - 1) * strides[i] + eff[i] - in_hw[i] - begin))
        total = max((math.ceil(in_hw[i] / strides[i]) - 1) * strides[i] + eff[i] - in_hw[i], 0)
        same &= (pads[i], pads[i + 2]) == (total // 2, total - total // 2) \
            and out == math.ceil(in_hw[i] / strides[i])
    if not any(pads):
        return "VALID", None
    if same and allow_same:
        return "SAME", None
    return "VALID", [(pads[0], pads[2]), (pads[1], pads[3])]


def pad_input(ctx: Lowering, x: Tensor, pads: list[tuple[int, int]],
              value: float | None = None) -> str:
    """Emit PAD (zeros; the zero point when int8) or PADV2 (a constant) on H and W."""
    (top, bottom), (left, right) = pads
    n, h, w, c = x.shape
    padded = ctx.like("pad", x, (n, h + top + bottom, w + left + right, c))
    paddings = ctx.int32("paddings", [[0, 0], [top, bottom], [left, right], [0, 0]])
    if value is None:
        ctx.emit("PAD", [x.name, paddings], [padded])
        return padded
    if x.quant is not None:
        fill = ctx.graph.add_const(f"{ctx.op.name}_pad_value", np.asarray([value], np.int8),
                                   quant=x.quant)
    else:
        fill = ctx.graph.add_const(f"{ctx.op.name}_pad_value", np.asarray([value], np.float32))
    ctx.emit("PADV2", [x.name, paddings, fill], [padded])
    return padded


def bias_input(ctx: Lowering, bias: Tensor | None, channels: int) -> str:
    """The bias: the model's (float, or int32 that `quantize_biases` rescales) or zeros."""
    if bias is None:
        return ctx.graph.add_const(f"{ctx.op.name}_bias", np.zeros(channels, np.float32))
    if not bias.is_const:
        raise ctx.fail("the bias must be a constant")
    if bias.data.size != channels:
        raise ctx.fail(f"bias has {bias.data.size} values for {channels} output channels")
    if bias.data.ndim != 1:
        return ctx.graph.add_const(f"{bias.name}_1d", bias.data.reshape(-1), quant=bias.quant)
    return bias.name


@register("Conv", layout=conv_layout)
def lower_conv(ctx: Lowering, *, kernel_shape: list[int] | None = None,
               strides: list[int] | None = None, pads: list[int] | None = None,
               dilations: list[int] | None = None, group: int = 1,
               auto_pad: str = "NOTSET") -> None:
    """2-D convolution, NHWC.

    Inputs: X [N,H,W,Cin] (float32, or int8 per-tensor), W constant (OHWI, or
    1HWC when depthwise; int8 per-output-channel, zero point 0, when
    quantized), optional B [Cout] (float32 or int32). group == 1 lowers to
    CONV_2D; group == Cin lowers to DEPTHWISE_CONV_2D with depth_multiplier
    Cout / Cin; 1 < group < Cin (ResNeXt, RegNet) to a grouped CONV_2D, whose
    filter has Cin / group input channels (version 6; run by LiteRT and
    tflite-runtime 2.14, builtin kernels and XNNPACK, float and int8). Padding:
    SAME / VALID when they express the ONNX pads, else PAD then VALID. The int32
    bias (scale = input scale x weight scale) is made by the `quantize_biases` pass.
    """
    x, w, y = ctx.input(0), ctx.input(1), ctx.output()
    if w is None or not w.is_const:
        raise ctx.fail("weights must be a constant (initializer)")
    if x.rank != 4 or w.rank != 4:
        raise ctx.fail(f"only 2-D convolution is supported (input rank {x.rank})")
    c_in, c_out = x.shape[3], y.shape[3]
    depthwise = group > 1 and group == c_in
    if c_in % group or c_out % group:
        raise ctx.fail(f"group={group} does not divide {c_in} input and {c_out} output channels")
    kernel = list(w.shape[1:3])
    if kernel_shape is not None and list(kernel_shape) != kernel:
        raise ctx.fail(f"kernel_shape {kernel_shape} disagrees with the weights {kernel}")
    strides, dilations = list(strides or [1, 1]), list(dilations or [1, 1])
    padding, explicit = spatial_padding(ctx, x, kernel, strides, dilations, pads, auto_pad)
    source = pad_input(ctx, x, explicit) if explicit else x.name
    options = dict(padding=padding, stride_h=strides[0], stride_w=strides[1],
                   dilation_h_factor=dilations[0], dilation_w_factor=dilations[1],
                   fused_activation_function="NONE")
    inputs = [source, w.name, bias_input(ctx, ctx.input(2), c_out)]
    if depthwise:
        ctx.emit("DEPTHWISE_CONV_2D", inputs, [y.name], depth_multiplier=c_out // c_in,
                 **options)
    else:
        ctx.emit("CONV_2D", inputs, [y.name], **options)
