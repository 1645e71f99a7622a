"""Keras applications' MobileNet and MobileNetV2, as numpy functions of Keras-named weights.

Written from keras/src/applications/mobilenet.py and mobilenet_v2.py: the layer names
(`conv_dw_1/depthwise_kernel:0`, `block_3_expand_BN/moving_variance:0`, ...), Keras'
tensor layouts (Conv2D kernel (kh, kw, in, out), DepthwiseConv2D kernel (kh, kw, in,
multiplier), Dense kernel (in, out)), NHWC activations, BatchNormalization with epsilon
1e-3, 'same' padding as TensorFlow computes it and the explicit ZeroPadding2D before
strided depthwise convolutions. Independent of torch and of edgecnn's layout
conversion: the reference for the Keras name tables of `edgecnn.models.pretrained`.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EPS = 1e-3  # keras.layers.BatchNormalization's default epsilon

#: MobileNet: (pointwise filters, stride) of conv_dw_1 .. conv_dw_13
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
             (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
#: MobileNetV2: (expansion, filters, stride) of block_id 0 .. 16
V2_BLOCKS = [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1),
             (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1),
             (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1), (6, 320, 1)]


def _same(n: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, kernel: int, stride: int, padding) -> np.ndarray:
    """(N, OH, OW, C, k, k) windows of NHWC `x`; padding 'same', 'valid' or ((t, b), (l, r))."""
    if padding == "same":
        padding = (_same(x.shape[1], kernel, stride), _same(x.shape[2], kernel, stride))
    elif padding == "valid":
        padding = ((0, 0), (0, 0))
    x = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    return sliding_window_view(x, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]


def conv(x, kernel, stride=1, padding="same", bias=None):
    out = np.einsum("nhwcij,ijco->nhwo", _windows(x, kernel.shape[0], stride, padding), kernel)
    return out if bias is None else out + bias


def depthwise(x, kernel, stride=1, padding="same"):
    n, h, w, c = x.shape
    win = _windows(x, kernel.shape[0], stride, padding)
    return np.einsum("nhwcij,ijcm->nhwcm", win, kernel).reshape(*win.shape[:3], -1)


def batchnorm(x, w, name):
    g, b, m, v = (w[f"{name}/{k}:0"] for k in ("gamma", "beta", "moving_mean", "moving_variance"))
    return g * (x - m) / np.sqrt(v + EPS) + b


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def _correct_pad(x, kernel: int):
    """keras.applications.imagenet_utils.correct_pad."""
    adjust = (1 - x.shape[1] % 2, 1 - x.shape[2] % 2)
    c = kernel // 2
    return (c - adjust[0], c), (c - adjust[1], c)


def mobilenet_v1(x: np.ndarray, w: dict) -> np.ndarray:
    """NHWC images -> logits (conv_preds, before the softmax)."""
    x = relu6(batchnorm(conv(x, w["conv1/kernel:0"], 2), w, "conv1_bn"))
    for i, (_, stride) in enumerate(V1_BLOCKS, 1):
        pad = "same" if stride == 1 else ((0, 1), (0, 1))  # ZeroPadding2D, then 'valid'
        x = depthwise(x, w[f"conv_dw_{i}/depthwise_kernel:0"], stride, pad)
        x = relu6(batchnorm(x, w, f"conv_dw_{i}_bn"))
        x = relu6(batchnorm(conv(x, w[f"conv_pw_{i}/kernel:0"]), w, f"conv_pw_{i}_bn"))
    x = x.mean((1, 2), keepdims=True)
    return conv(x, w["conv_preds/kernel:0"], bias=w["conv_preds/bias:0"]).reshape(len(x), -1)


def mobilenet_v2(x: np.ndarray, w: dict) -> np.ndarray:
    """NHWC images -> logits (predictions, before the softmax)."""
    x = relu6(batchnorm(conv(x, w["Conv1/kernel:0"], 2), w, "bn_Conv1"))
    for i, (_, filters, stride) in enumerate(V2_BLOCKS):
        inputs, prefix = x, f"block_{i}_" if i else "expanded_conv_"
        if i:
            x = relu6(batchnorm(conv(x, w[prefix + "expand/kernel:0"]), w, prefix + "expand_BN"))
        pad = "same" if stride == 1 else _correct_pad(x, 3)
        x = depthwise(x, w[prefix + "depthwise/depthwise_kernel:0"], stride, pad)
        x = relu6(batchnorm(x, w, prefix + "depthwise_BN"))
        x = batchnorm(conv(x, w[prefix + "project/kernel:0"]), w, prefix + "project_BN")
        if stride == 1 and inputs.shape[-1] == filters:
            x = x + inputs
    x = relu6(batchnorm(conv(x, w["Conv_1/kernel:0"]), w, "Conv_1_bn"))
    return x.mean((1, 2)) @ w["predictions/kernel:0"] + w["predictions/bias:0"]


def _bn(rng, w, name, channels):
    w[f"{name}/gamma:0"] = rng.uniform(0.5, 1.5, channels)
    w[f"{name}/beta:0"] = rng.normal(0, 0.1, channels)
    w[f"{name}/moving_mean:0"] = rng.normal(0, 0.1, channels)
    w[f"{name}/moving_variance:0"] = rng.uniform(0.5, 1.5, channels)


def _kernel(rng, shape, fan_in):
    return rng.normal(0, np.sqrt(2 / fan_in), shape)


def mobilenet_v1_weights(classes: int, seed: int = 0) -> dict:
    """Random Keras-layout weights under Keras' names, in the order Keras creates them."""
    rng, w = np.random.default_rng(seed), {}
    w["conv1/kernel:0"] = _kernel(rng, (3, 3, 3, 32), 27)
    _bn(rng, w, "conv1_bn", 32)
    chs = 32
    for i, (filters, _) in enumerate(V1_BLOCKS, 1):
        w[f"conv_dw_{i}/depthwise_kernel:0"] = _kernel(rng, (3, 3, chs, 1), 9)
        _bn(rng, w, f"conv_dw_{i}_bn", chs)
        w[f"conv_pw_{i}/kernel:0"] = _kernel(rng, (1, 1, chs, filters), chs)
        _bn(rng, w, f"conv_pw_{i}_bn", filters)
        chs = filters
    w["conv_preds/kernel:0"] = _kernel(rng, (1, 1, chs, classes), chs)
    w["conv_preds/bias:0"] = rng.normal(0, 0.1, classes)
    return w


def mobilenet_v2_weights(classes: int, seed: int = 0) -> dict:
    """Random Keras-layout weights under Keras' names, in the order Keras creates them."""
    rng, w = np.random.default_rng(seed), {}
    w["Conv1/kernel:0"] = _kernel(rng, (3, 3, 3, 32), 27)
    _bn(rng, w, "bn_Conv1", 32)
    chs = 32
    for i, (t, filters, _) in enumerate(V2_BLOCKS):
        prefix, mid = (f"block_{i}_" if i else "expanded_conv_"), chs * t
        if i:
            w[prefix + "expand/kernel:0"] = _kernel(rng, (1, 1, chs, mid), chs)
            _bn(rng, w, prefix + "expand_BN", mid)
        w[prefix + "depthwise/depthwise_kernel:0"] = _kernel(rng, (3, 3, mid, 1), 9)
        _bn(rng, w, prefix + "depthwise_BN", mid)
        w[prefix + "project/kernel:0"] = _kernel(rng, (1, 1, mid, filters), mid) * 0.5
        _bn(rng, w, prefix + "project_BN", filters)
        chs = filters
    w["Conv_1/kernel:0"] = _kernel(rng, (1, 1, chs, 1280), chs)
    _bn(rng, w, "Conv_1_bn", 1280)
    w["predictions/kernel:0"] = _kernel(rng, (1280, classes), 1280)
    w["predictions/bias:0"] = rng.normal(0, 0.1, classes)
    return w
