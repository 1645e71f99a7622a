"""The TFLite int8 spec's arithmetic, shared by the quantizer and the converter (numpy only).

Source: https://ai.google.dev/edge/litert/models/quantization_spec and the
kernels' own checks (tensorflow/lite/kernels/activations.cc for the fixed
output parameters). Torch-free: the converter runs on devices without torch.
"""

from __future__ import annotations

import numpy as np

#: int32 bias range; a bias value outside it cannot be stored
BIAS_RANGE = (-(2**31), 2**31 - 1)

#: TFLite builtins whose int8 output has one fixed (scale, zero point): the kernels refuse
#: any other (activations.cc: Prepare of LOGISTIC, SOFTMAX, LOG_SOFTMAX, TANH)
FIXED_OUTPUT: dict[str, tuple[float, int]] = {
    "LOGISTIC": (1 / 256, -128),
    "SOFTMAX": (1 / 256, -128),
    "LOG_SOFTMAX": (16 / 256, 127),
    "TANH": (1 / 128, 0),
}


def bias_safe_weight_scale(bias: np.ndarray, input_scale: float,
                           weight_scale: np.ndarray) -> np.ndarray:
    """Per-channel weight scales raised just enough that every int32 bias fits.

    The int32 bias of a conv / fully-connected op has scale input_scale x
    weight_scale[c] (zero point 0). A channel whose weights are all (nearly)
    zero, e.g. pruned or folded with BatchNorm gamma 0, gets a weight scale near
    float32 eps, and then |bias / (input_scale x weight_scale)| can exceed
    2**31 - 1. onnxruntime's QDQ quantizer resolves this the same way: the
    weight scale rises to |bias| / (input_scale x (2**31 - 1)), which only
    coarsens that channel's (tiny) weights.

    bias: (C,) float; weight_scale: (C,) float32; returns float32 (C,) with
    returned >= weight_scale everywhere, equal where the bias already fits.
    """
    bias = np.abs(np.asarray(bias, np.float64).reshape(-1))
    scale = np.asarray(weight_scale, np.float32).reshape(-1)
    if scale.size == 1 and bias.size > 1:
        scale = np.repeat(scale, bias.size)
    # the smallest scale that fits, nudged up by float32 rounding of the product
    needed = bias / (float(input_scale) * BIAS_RANGE[1])
    raised = np.where(needed > scale.astype(np.float64), needed * (1 + 1e-6), scale)
    return raised.astype(np.float32)


def quantize_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """round(bias / scale) as int32, computed and clamped in float64 (no wrap-around)."""
    q = np.round(np.asarray(bias, np.float64) / np.asarray(scale, np.float64))
    return np.clip(q, *BIAS_RANGE).astype(np.int64).astype(np.int32)
