"""Padding conventions: PyTorch's symmetric k//2, or TensorFlow's 'SAME'.

TensorFlow's 'SAME' (tf.nn.conv2d, tf.nn.max_pool; the rule is in TensorFlow's
`GetWindowedOutputSize`, `tensorflow/core/framework/kernel_shape_util.cc`)
makes the output `ceil(in / stride)` long and pads
`total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - in, 0)`
pixels per spatial dim, `total // 2` at the start (top / left) and the rest at
the end (bottom / right). A stride-2 3x3 conv on an even size pads 0 on top and
1 at the bottom, where PyTorch's `padding=1` pads 1 on both sides: weights
trained in TensorFlow see shifted windows in a symmetric model (EfficientNet-Lite0
loses 2-3 ImageNet top-1 points so). Unstrided odd kernels pad alike both ways.

`apply_padding(model, "tf_same")` swaps every 'same-intended' conv (padding equal
to dilation * (kernel - 1) // 2) and pool whose symmetric padding differs from
TF's for a module that pads explicitly (`F.pad`, then an unpadded window): the
int8 converter folds such a zero pad back into the conv as TFLite's
`padding=SAME`, so the .tflite holds no PAD op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.errors import EdgecnnError

#: model option `padding`: the zoo's default, and TensorFlow's 'SAME'
PADDINGS = ("symmetric", "tf_same")


def check_padding(padding: object) -> str:
    """`padding` if it is one of PADDINGS, else EdgecnnError listing them."""
    if padding not in PADDINGS:
        raise EdgecnnError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}"[:200])
    return str(padding)


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(begin, end) padding of one spatial dim under TensorFlow's 'SAME' (see module doc)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _pairs(value: object) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore


def _pad_hw(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
            dilation: tuple[int, int], value: float = 0.0) -> torch.Tensor:
    (top, bottom), (left, right) = (tf_same_pads(int(x.shape[-2 + i]), kernel[i], stride[i],
                                                 dilation[i]) for i in range(2))
    if not (top or bottom or left or right):
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d padding like TensorFlow's 'SAME' for the input it is given (NCHW):
    explicit zero `F.pad` (bottom / right gets the odd pixel), then an unpadded conv.
    Same parameters and state_dict keys as nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_hw(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _window_args(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[tuple[int, int], bool] | None:
    """(begin padding, ceil_mode) that make a PyTorch pool pad as TF's 'SAME', or None.

    With the odd pixel at the end and stride > 1, a ceil-mode window overhanging
    the end by one pixel is TF's extra end pad (the output is ceil(in / stride)
    long both ways); an even total needs no ceil mode.
    """
    pads = [tf_same_pads(int(x.shape[-2 + i]), kernel[i], stride[i], dilation[i])
            for i in range(2)]
    if any(e != b and stride[i] == 1 for i, (b, e) in enumerate(pads)):
        return None
    return (pads[0][0], pads[1][0]), any(e != b for b, e in pads)


class MaxPool2dSame(nn.MaxPool2d):
    """nn.MaxPool2d with TensorFlow's 'SAME' padding (the pad never wins)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, d = _pairs(self.kernel_size), _pairs(self.stride), _pairs(self.dilation)
        args = _window_args(x, k, s, d)
        if args is None:  # an even kernel at stride 1: pad explicitly with -inf
            return F.max_pool2d(_pad_hw(x, k, s, d, value=float("-inf")), k, s, 0, d)
        return F.max_pool2d(x, k, s, args[0], d, args[1])


class AvgPool2dSame(nn.AvgPool2d):
    """nn.AvgPool2d with TensorFlow's 'SAME' padding: TF averages the pixels inside the
    image only (PyTorch's `count_include_pad=False`), the padding split as TF splits it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = _pairs(self.kernel_size), _pairs(self.stride)
        args = _window_args(x, k, s, (1, 1))
        if args is None:
            raise EdgecnnError(f"AvgPool2d kernel {k} stride {s}: TF 'SAME' with an even "
                               "kernel at stride 1 is not supported")
        return F.avg_pool2d(x, k, s, args[0], args[1], False)


def _same_intended(module: nn.Conv2d) -> bool:
    """A conv written to keep the size at stride 1: padding dilation * (k - 1) // 2."""
    if module.padding == "same":
        return True
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        return False
    return all(p == d * (k - 1) // 2 for p, k, d in
               zip(module.padding, module.kernel_size, module.dilation, strict=True))


def _differs(kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> bool:
    """Whether TF 'SAME' can differ from symmetric padding for some input size:
    strided windows, or an odd total (even effective kernel)."""
    return any(s > 1 or d * (k - 1) % 2 for k, s, d in zip(kernel, stride, dilation,
                                                         strict=True))


def _swapped(module: nn.Module) -> nn.Module | None:
    """The TF-'SAME' replacement of `module`, or None when it keeps its own padding."""
    if type(module) is nn.Conv2d and _same_intended(module) \
            and _differs(module.kernel_size, module.stride, module.dilation):
        new = Conv2dSame(module.in_channels, module.out_channels, module.kernel_size,
                         module.stride, 0, module.dilation, module.groups,
                         module.bias is not None, device=module.weight.device,
                         dtype=module.weight.dtype)
        new.weight, new.bias = module.weight, module.bias
        return new
    if type(module) in (nn.MaxPool2d, nn.AvgPool2d):
        k, s = _pairs(module.kernel_size), _pairs(module.stride)
        # TF's average counts the pixels inside the image only: padded averages differ
        counts_pad = isinstance(module, nn.AvgPool2d) and module.count_include_pad \
            and any(_pairs(module.padding))
        if _pairs(module.padding) != tuple((x - 1) // 2 for x in k) \
                or getattr(module, "ceil_mode", False) \
                or not (_differs(k, s, (1, 1)) or counts_pad):
            return None
        if isinstance(module, nn.MaxPool2d):
            if _pairs(module.dilation) != (1, 1) or module.return_indices:
                return None
            return MaxPool2dSame(k, s)
        return AvgPool2dSame(k, s)
    return None


def apply_padding(model: nn.Module, padding: str) -> nn.Module:
    """Make `model` pad as `padding` says (see PADDINGS); in place, returns the model.

    "symmetric" leaves it as it is. "tf_same" swaps each same-intended nn.Conv2d and
    each MaxPool2d / AvgPool2d with k//2 padding whose result can differ from TF's
    'SAME' (strided, or an even kernel) for its explicit-padding twin; parameters are
    shared, not copied. Raises EdgecnnError for an unknown `padding`.
    """
    if check_padding(padding) == "symmetric":
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _swapped(child)
            if new is not None:
                setattr(parent, name, new)
    return model


def set_batchnorm_eps(model: nn.Module, eps: float) -> nn.Module:
    """Set every BatchNorm's epsilon (1e-3 for TensorFlow-trained weights); in place."""
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps <= 0.1:
        raise EdgecnnError(f"bn_eps must be in (0, 0.1], got {eps!r}")
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = float(eps)
    return model
