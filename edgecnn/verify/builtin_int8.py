"""The int8 arithmetic of TFLite's builtin kernels, in numpy: an oracle for exported files.

LiteRT runs an int8 graph on XNNPACK by default, which requantizes in float
and rounds half to even, as onnxruntime and torch's fake quantization do.
Without delegates, and always in tflite-runtime 2.14 (a Raspberry Pi OS
user's runtime), the builtin kernels run it: they requantize in fixed point,
a 31-bit multiplier then a rounding right shift, so a value just below a
half step can round up twice. That is their design, not a property of the
file, and no choice of scales makes it exact.

`check_builtin` runs a file on the builtin kernels with every intermediate
tensor kept, and recomputes each CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
ADD and MEAN from the tensors the kernel actually read and the file's own
weights, bias, scales and zero points. Bit-for-bit agreement shows the
exporter's integer parameters are what the int8 spec prescribes; the outputs
float requantization would have given differently measure the drift the
builtin kernels add, op by op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from numpy.lib.stride_tricks import sliding_window_view

from edgecnn.export.tflite.builtins import BUILTINS
from edgecnn.runtime.backends.tflite import interpreter
from edgecnn.verify.litert import BUILTIN_NAMES, quantize_input

ADD_LEFT_SHIFT = 20  # TFLite's int8 ADD scales both inputs up by 2**20 first


def _ties(op: _Op) -> str:
    """How the builtin kernel's final rounding right shift breaks ties (its record)."""
    return BUILTINS.get(op.name).rounding


def quantize_multiplier(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's QuantizeMultiplier: real = q * 2**(shift - 31), q in [2**30, 2**31)."""
    fraction, shift = np.frexp(np.asarray(real, np.float64))
    q = np.round(fraction * 2.0 ** 31).astype(np.int64)
    carry = q == 2 ** 31
    return np.where(carry, q // 2, q), shift + carry


def fixed_point_multiply(x: np.ndarray, real: np.ndarray, ties: str) -> np.ndarray:
    """x * real in fixed point, as the kernels requantize (see `multiply_by_quantized`)."""
    return multiply_by_quantized(x, *quantize_multiplier(real), ties)


def multiply_by_quantized(x: np.ndarray, q: np.ndarray, shift: np.ndarray,
                          ties: str) -> np.ndarray:
    """MultiplyByQuantizedMultiplier: a rounding doubling high multiply by q (ties
    toward +inf), then a rounding right shift (ties "up" or "away" from zero)."""
    product = (np.asarray(x, np.int64) << np.maximum(shift, 0)) * q
    right = np.maximum(-shift, 0)
    if ties == "up":
        high = (product + (1 << 30)) >> 31
        return (high + ((1 << right) >> 1)) >> right
    nudged = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.sign(nudged) * (np.abs(nudged) >> 31)  # C++ division truncates
    mask = (1 << right) - 1
    return (high >> right) + ((high & mask) > (mask >> 1) + (high < 0))


def float_multiply(x: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Float requantization (XNNPACK, onnxruntime): float32 product, ties to even."""
    return np.round(np.asarray(x, np.float32) * np.asarray(real, np.float32)).astype(np.int64)


@dataclass(frozen=True)
class OpCheck:
    """One operator over all images: outputs unlike the emulation, and unlike float
    requantization of the same inputs."""

    index: int
    op: str
    output: str
    elements: int
    mismatches: int
    float_differs: int

    @property
    def drift(self) -> float:
        return self.float_differs / self.elements


class _Op:
    """One operator of the file: its type, options, tensor indices and quantization."""

    def __init__(self, op: schema.OperatorT, name: str, details: dict[int, dict]) -> None:
        self.name, self.options = name, op.builtinOptions
        self.inputs, self.output = list(op.inputs), int(op.outputs[0])
        self._details = details

    def quant(self, index: int) -> tuple[float, int]:
        scale, zero = self._details[index]["quantization"]
        return float(scale), int(zero)

    def scales(self, index: int) -> np.ndarray:
        return self._details[index]["quantization_parameters"]["scales"].astype(np.float64)


#: fused activation -> its float (low, high), None for unbounded
ACTIVATION_BOUNDS = {schema.ActivationFunctionType.RELU: (0.0, None),
                     schema.ActivationFunctionType.RELU6: (0.0, 6.0),
                     schema.ActivationFunctionType.RELU_N1_TO_1: (-1.0, 1.0)}


def _activation_range(op: _Op) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the int8 clamp of a fused activation (the
    bounds quantized with std::round, ties away from zero)."""
    scale, zero = op.quant(op.output)
    act = getattr(op.options, "fusedActivationFunction", schema.ActivationFunctionType.NONE)
    low, high = ACTIVATION_BOUNDS.get(act, (None, None))

    def quantized(bound: float) -> int:
        return zero + int(np.sign(bound) * np.floor(abs(bound) / scale + 0.5))

    return (-128 if low is None else max(-128, quantized(low)),
            127 if high is None else min(127, quantized(high)))


def _windows(x: np.ndarray, weights_hw: tuple[int, int], options) -> np.ndarray:
    """(N, OH, OW, C, KH, KW) input windows of a convolution, SAME padded with zeros
    (the input is already zero-point shifted)."""
    (kh, kw), (sh, sw) = weights_hw, (options.strideH, options.strideW)
    dh, dw = options.dilationHFactor, options.dilationWFactor
    span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    if options.padding == schema.Padding.SAME:
        pads = []
        for size, stride, extent in zip(x.shape[1:3], (sh, sw), span, strict=True):
            total = max((-(-size // stride) - 1) * stride + extent - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), *pads, (0, 0)))
    return sliding_window_view(x, span, axis=(1, 2))[:, ::sh, ::sw, :, ::dh, ::dw]


def _accumulate(op: _Op, tensors: Callable[[int], np.ndarray]) -> np.ndarray:
    """The int32 accumulator of a convolution or fully connected op (with bias)."""
    _, x_zero = op.quant(op.inputs[0])
    x = tensors(op.inputs[0]).astype(np.int64) - x_zero
    w = tensors(op.inputs[1]).astype(np.int64)
    bias = tensors(op.inputs[2]).astype(np.int64) if len(op.inputs) > 2 and op.inputs[2] >= 0 else 0
    if op.name == "FULLY_CONNECTED":
        return x.reshape(-1, w.shape[1]) @ w.T + bias
    windows = _windows(x, w.shape[1:3], op.options)
    if op.name == "CONV_2D":  # grouped when the filter has fewer input channels
        groups, width = x.shape[3] // w.shape[3], w.shape[3]
        outs = w.shape[0] // groups
        return np.concatenate([np.einsum("nhwcij,oijc->nhwo",
                                         windows[:, :, :, g * width:(g + 1) * width],
                                         w[g * outs:(g + 1) * outs]) for g in range(groups)],
                              axis=3) + bias
    windows = np.repeat(windows, w.shape[3] // x.shape[3], axis=3)  # depth multiplier
    return np.einsum("nhwcij,ijc->nhwc", windows, w[0]) + bias


def _grouped(op: _Op, tensors) -> bool:
    return op.name == "CONV_2D" and tensors(op.inputs[1]).shape[3] != \
        tensors(op.inputs[0]).shape[3]


def _linear(op: _Op, tensors) -> tuple[np.ndarray, np.ndarray]:
    x_scale, _ = op.quant(op.inputs[0])
    y_scale, _ = op.quant(op.output)
    acc = _accumulate(op, tensors)
    real = x_scale * op.scales(op.inputs[1]) / y_scale
    # a grouped CONV_2D runs the reference kernel, which rounds ties away from zero
    ties = "away" if _grouped(op, tensors) else _ties(op)
    return fixed_point_multiply(acc, real, ties), float_multiply(acc, real)


def _add(op: _Op, tensors) -> tuple[np.ndarray, np.ndarray]:
    (s1, z1), (s2, z2) = op.quant(op.inputs[0]), op.quant(op.inputs[1])
    y_scale, _ = op.quant(op.output)
    x1 = tensors(op.inputs[0]).astype(np.int64) - z1
    x2 = tensors(op.inputs[1]).astype(np.int64) - z2
    twice_max, ties = 2 * max(s1, s2), _ties(op)
    raw = (fixed_point_multiply(x1 << ADD_LEFT_SHIFT, s1 / twice_max, ties)
           + fixed_point_multiply(x2 << ADD_LEFT_SHIFT, s2 / twice_max, ties))
    fixed = fixed_point_multiply(raw, twice_max / (2 ** ADD_LEFT_SHIFT * y_scale), ties)
    exact = np.round(np.float32(s1 / y_scale) * x1.astype(np.float32)
                     + np.float32(s2 / y_scale) * x2.astype(np.float32)).astype(np.int64)
    return fixed, exact


def _mean(op: _Op, tensors) -> tuple[np.ndarray, np.ndarray]:
    """QuantizedMeanOrSum: the multiplier of in/out scale is divided by the element
    count in integers, keeping floor(log2(count)) more bits, truncated."""
    x_scale, x_zero = op.quant(op.inputs[0])
    y_scale, _ = op.quant(op.output)
    x = tensors(op.inputs[0]).astype(np.int64) - x_zero
    axes = tuple(int(a) % x.ndim for a in tensors(op.inputs[1]).reshape(-1))
    count = int(np.prod([x.shape[a] for a in axes]))
    acc = x.sum(axis=axes, keepdims=bool(op.options.keepDims))
    q, shift = quantize_multiplier(x_scale / y_scale)
    extra = min(count.bit_length() - 1, 32, 31 + int(shift))
    fixed = multiply_by_quantized(acc, (q << extra) // count, shift - extra, _ties(op))
    return fixed, float_multiply(acc, x_scale / (y_scale * count))


EMULATED: dict[str, Callable[[_Op, Callable[[int], np.ndarray]], tuple[np.ndarray, np.ndarray]]]
EMULATED = {"CONV_2D": _linear, "DEPTHWISE_CONV_2D": _linear, "FULLY_CONNECTED": _linear,
            "ADD": _add, "MEAN": _mean}


def check_builtin(model: bytes | str | Path, images: np.ndarray) -> list[OpCheck]:
    """Run float `images` (NCHW, or rows for a 2-D input; quantized as
    `litert.run_images` does), one per invocation, through the builtin kernels and
    check every emulated int8 op against the emulation."""
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    root = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    it = interpreter(data, delegate=False, preserve_all_tensors=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = []
    for index, op in enumerate(root.subgraphs[0].operators):
        code = root.operatorCodes[op.opcodeIndex]
        name = BUILTIN_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]
        if name in EMULATED and details[int(op.outputs[0])]["dtype"] == np.int8:
            ops.append((index, _Op(op, name, details)))
    counts = {index: [0, 0, 0] for index, _ in ops}
    source = it.get_input_details()[0]
    for image in np.asarray(images, np.float32)[:, None]:
        nhwc = image.transpose(0, 2, 3, 1) if image.ndim == 4 else image
        it.set_tensor(source["index"], quantize_input(source, nhwc))
        it.invoke()
        for index, op in ops:
            got = it.get_tensor(op.output).astype(np.int64)
            low, high = _activation_range(op)
            _, zero = op.quant(op.output)
            fixed, exact = (np.clip(v.reshape(got.shape) + zero, low, high)
                            for v in EMULATED[op.name](op, it.get_tensor))
            counts[index][0] += got.size
            counts[index][1] += int((got != fixed).sum())
            counts[index][2] += int((got != exact).sum())
    return [OpCheck(index, op.name, details[op.output]["name"], *counts[index])
            for index, op in ops]
