"""Conv -> CONV_2D / DEPTHWISE_CONV_2D, and the SAME / VALID / explicit-PAD decision;
ConvTranspose -> TRANSPOSE_CONV."""

from __future__ import annotations

import math

import numpy as np

from edgecnn.export.tflite.graph import Tensor
from edgecnn.export.tflite.layouts import conv_layout, conv_transpose_layout
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


@register("ConvTranspose", layout=conv_transpose_layout)
def lower_convtranspose(ctx: Lowering, *, kernel_shape: list[int] | None = None,
                        strides: list[int] | None = None, pads: list[int] | None = None,
                        dilations: list[int] | None = None, group: int = 1,
                        output_padding: list[int] | None = None,
                        output_shape: list[int] | None = None,
                        auto_pad: str = "NOTSET") -> None:
    """2-D transposed convolution (decoders, U-Nets), NHWC -> TRANSPOSE_CONV.

    Inputs: X [N,H,W,Cin], W constant (OHWI after the layout pass; int8 per output
    channel), optional B [Cout]. TFLite's kernel writes the full (in - 1) x stride +
    kernel output cropped at the start by (total - out) // 2 when padding=SAME, by
    nothing when VALID; ONNX pads (and output_padding, which shape inference has in
    the output size) that are neither are the full VALID output then a STRIDED_SLICE.
    Always with its bias input (version 3; int8 version 2 without; 4 with a fused
    RELU / RELU6: op_version.cc; tflite-runtime 2.14 runs 4).
    group > 1 and dilations != 1 are not supported. int8: own output parameters, the
    int32 bias (input 3) scaled input x weight scale.
    """
    x, w, y = ctx.input(0), ctx.input(1), ctx.output()
    if w is None or not w.is_const:
        raise ctx.fail("weights must be a constant (initializer)")
    if x.rank != 4:
        raise ctx.fail(f"only 2-D transposed convolution is supported (input rank {x.rank})")
    if group != 1:
        raise ctx.fail(f"group={group} is not supported (TRANSPOSE_CONV has no groups)")
    if any(d != 1 for d in dilations or [1, 1]):
        raise ctx.fail(f"dilations {dilations} are not supported")
    strides = list(strides or [1, 1])
    kernel = list(w.shape[1:3])
    full = [(x.shape[1 + i] - 1) * strides[i] + kernel[i] for i in range(2)]
    out = list(y.shape[1:3])
    begin = [0, 0]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"):
        onnx_pads = list(pads or [0, 0, 0, 0]) if auto_pad == "NOTSET" else None
        for i in range(2):
            total = full[i] - out[i]
            if onnx_pads is not None:
                begin[i] = onnx_pads[i]
            elif auto_pad == "SAME_UPPER":
                begin[i] = total // 2
            elif auto_pad == "SAME_LOWER":
                begin[i] = total - total // 2
    else:
        raise ctx.fail(f"auto_pad={auto_pad!r} is not supported")
    if any(o > f for o, f in zip(out, full, strict=True)) or any(b < 0 for b in begin):
        raise ctx.fail(f"output {out} larger than the full transposed convolution {full}")
    c_out = y.shape[3]
    bias = bias_input(ctx, ctx.input(2), c_out)
    options = dict(stride_h=strides[0], stride_w=strides[1], fused_activation_function="NONE")
    if begin == [0, 0] and out == full:
        shape = ctx.int32("output_shape", [y.shape[0], *out, c_out])
        ctx.emit("TRANSPOSE_CONV", [shape, w.name, x.name, bias], [y.name], padding="VALID",
                 **options)
    elif all(b == (f - o) // 2 and o == i * s for b, f, o, i, s in
             zip(begin, full, out, x.shape[1:3], strides, strict=True)):
        shape = ctx.int32("output_shape", [y.shape[0], *out, c_out])
        ctx.emit("TRANSPOSE_CONV", [shape, w.name, x.name, bias], [y.name], padding="SAME",
                 **options)
    else:
        whole = ctx.like("full", y, (y.shape[0], *full, c_out))
        shape = ctx.int32("output_shape", [y.shape[0], *full, c_out])
        ctx.emit("TRANSPOSE_CONV", [shape, w.name, x.name, bias], [whole], padding="VALID",
                 **options)
        ctx.emit("STRIDED_SLICE", [whole, ctx.int32("begin", [0, *begin, 0]),
                                   ctx.int32("end", [y.shape[0], begin[0] + out[0],
                                                     begin[1] + out[1], c_out]),
                                   ctx.int32("strides", [1, 1, 1, 1])], [y.name],
                 begin_mask=0, end_mask=0, ellipsis_mask=0, new_axis_mask=0,
                 shrink_axis_mask=0)
