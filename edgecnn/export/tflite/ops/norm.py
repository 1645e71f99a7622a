"""Normalization: inference BatchNormalization that no convolution absorbed."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Quant
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
