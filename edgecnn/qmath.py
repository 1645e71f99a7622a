"""The TFLite int8 spec's arithmetic, shared by the quantizer and the converter (numpy only).

Source: https://ai.google.dev/edge/litert/models/quantization_spec. Torch-free:
the converter runs on devices without torch. (Per-op contracts, such as fixed
output parameters, are in the builtin records: `edgecnn.export.tflite.builtins`.)
"""

from __future__ import annotations

import numpy as np

#: int32 bias range; a bias value outside it cannot be stored
BIAS_RANGE = (-(2**31), 2**31 - 1)


def accumulator_headroom(fan_in: int) -> int:
    """The largest |int32 bias| that cannot overflow an int32 accumulator: 2**31 - 1 less the
    largest |sum of (x - zero point) x w| over `fan_in` products (255 x 127 each)."""
    return BIAS_RANGE[1] - int(fan_in) * 255 * 127


def bias_safe_weight_scale(bias: np.ndarray, input_scale: float,
                           weight_scale: np.ndarray, fan_in: int) -> np.ndarray:
    """Per-channel weight scales raised just enough that every int32 bias fits, with room
    for the accumulation.

    The int32 bias of a conv / fully-connected op has scale input_scale x
    weight_scale[c] (zero point 0). A channel whose weights are all (nearly)
    zero, e.g. pruned or folded with BatchNorm gamma near 0, gets a weight scale
    near float32 eps, and then |bias / (input_scale x weight_scale)| can exceed
    2**31 - 1. onnxruntime's QDQ quantizer raises the weight scale to
    |bias| / (input_scale x (2**31 - 1)); that is not enough where the kernel
    accumulates into the bias in int32 (onnxruntime's QLinearConv, XNNPACK,
    TFLite's builtin kernels): tiny weights that stay nonzero at the raised scale
    add to a bias at the edge of the range and the sum wraps around (measured on
    EfficientNet-Lite0's stem: 85 steps). So the bias is kept within
    `accumulator_headroom(fan_in)`.

    bias: (C,) float; weight_scale: (C,) float32; fan_in: products per output
    (kernel area x input channels per group); returns float32 (C,) with
    returned >= weight_scale everywhere, equal where the bias already fits.
    """
    bias = np.abs(np.asarray(bias, np.float64).reshape(-1))
    scale = np.asarray(weight_scale, np.float32).reshape(-1)
    if scale.size == 1 and bias.size > 1:
        scale = np.repeat(scale, bias.size)
    # the smallest scale that fits, nudged up by float32 rounding of the product
    needed = bias / (float(input_scale) * accumulator_headroom(fan_in))
    raised = np.where(needed > scale.astype(np.float64), needed * (1 + 1e-6), scale)
    return raised.astype(np.float32)


def quantize_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """round(bias / scale) as int32, computed and clamped in float64 (no wrap-around)."""
    q = np.round(np.asarray(bias, np.float64) / np.asarray(scale, np.float64))
    return np.clip(q, *BIAS_RANGE).astype(np.int64).astype(np.int32)


def quantize_symmetric(data: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights in [-127, 127], zero point 0: (q, scale) with one scale per slice along
    `axis` (per channel), or one scale when `axis` is None. An all-zero slice gets scale 1e-8."""
    data = np.asarray(data, np.float32)
    reduce = tuple(i for i in range(data.ndim) if i != axis) if axis is not None else None
    scale = np.max(np.abs(data), axis=reduce).astype(np.float64) / 127.0
    scale = np.atleast_1d(np.where(scale > 0, scale, 1e-8).astype(np.float32))
    shape = [1] * data.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.round(data / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def affine_quantize(x: np.ndarray, scale: float, zero_point: int, dtype=np.int8) -> np.ndarray:
    """real -> integer, as the QDQ model's input QuantizeLinear: round(x / scale) +
    zero_point, the division in float32, ties to even (ONNX QuantizeLinear, onnxruntime's
    MLAS kernel, torch's fake quantization, XNNPACK's float -> int8 convert), saturated to
    `dtype`'s range. Every float tensor fed to an integer input goes through this one
    function (sessions, the converter's parity helpers, inspect, the tests).

    An int8 .tflite's integer input stands for the QuantizeLinear that the converter
    folded away, so it is quantized as that node would quantize it. TFLite's QUANTIZE
    reference kernel (`AffineQuantize`, `TfLiteRound`) rounds ties away from zero
    instead: the two differ only where x / scale is exactly k + 0.5, and then by one
    step, but resized or averaged images hit such ties often (digits at 32 px: 2% of
    the input values), and one step there moved 1-2% of the block benchmark's top-1
    decisions against onnxruntime (`benchmarks/blocks.md`).
    """
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def affine_dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """integer -> real: scale x (q - zero_point), float32."""
    return np.float32(scale) * (np.asarray(q).astype(np.float32) - np.float32(zero_point))


#: hard-swish's gate h = clip(x / 6 + 1/2, 0, 1) spans 2n steps of x's scale / 6 when x's
#: scale is 3 / n; an int8 tensor holds at most 255 steps, so n <= 127
HARDSWISH_MAX_STEPS = 127


def hardswish_input_scale(scale: float) -> float:
    """The scale the quantizer gives hard-swish's input: `scale` raised to the nearest
    3 / n above it (n = floor(3 / scale), at most 127), so that h = clip(x / 6 + 1/2, 0, 1)
    is exact on the int8 grid (scale / 6, zero point 127 - 2n): x / 6 + 1/2 is
    (q - zero point + n) steps of scale / 6, and [0, 1] is [127 - 2n, 127]. The int8
    lowering then rounds once, in the product x * h, as onnxruntime's QDQ HardSwish does
    (`export.tflite.ops.elementwise.lower_hardswish`). Keeping the zero point, the raised
    grid still holds the observed range. A scale above 3 (a range over 765) is returned
    as it is.
    """
    if scale > 3.0:
        return scale
    steps = int(np.floor(3.0 / scale * (1 + 1e-6)))  # a scale already 3 / n keeps n
    return 3.0 / min(HARDSWISH_MAX_STEPS, steps)


def hardswish_gate_steps(scale: float) -> int | None:
    """n when `scale` is 3 / n (to float32 precision) with 1 <= n <= 127, else None: the
    hard-swish input grids `hardswish_input_scale` makes."""
    steps = 3.0 / float(scale)
    n = round(steps)
    return n if 1 <= n <= HARDSWISH_MAX_STEPS and abs(steps - n) <= 1e-4 * n else None
