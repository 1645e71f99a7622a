"""EfficientNet-B0 (Tan & Le 2019) and EfficientNet-Lite0, its quantization-friendly variant.

Lite drops squeeze-excite, swaps SiLU for ReLU6 and keeps the stem (32) and
head (1280) fixed when the width is scaled.
"""

from __future__ import annotations

from torch import nn

from edgecnn.models.blocks import InvertedResidual, MBConv, make_divisible
from edgecnn.models.net import MobileNet, input_strides
from edgecnn.models.registry import register_model

# [expand_ratio, kernel, out_channels, repeats, stride] per stage (the B0 table)
ARCH = [[1, 3, 16, 1, 1], [6, 3, 24, 2, 2], [6, 5, 40, 2, 2], [6, 3, 80, 3, 2],
        [6, 5, 112, 3, 1], [6, 5, 192, 4, 2], [6, 3, 320, 1, 1]]


def _efficientnet(*, lite: bool, num_classes: int, in_channels: int, width_mult: float,
                  small_input: bool, padding: str, bn_eps: float) -> MobileNet:
    act_layer = nn.ReLU6 if lite else nn.SiLU
    stem_stride, strides = input_strides([row[4] for row in ARCH], small_input)
    in_chs = stem_chs = 32 if lite else make_divisible(32 * width_mult)
    blocks: list[nn.Module] = []
    for (expand, kernel, chs, repeats, _), stride in zip(ARCH, strides, strict=True):
        out_chs = make_divisible(chs * width_mult)
        for i in range(repeats):
            s = stride if i == 0 else 1
            if lite:
                blocks.append(InvertedResidual(in_chs, out_chs, s, expand, kernel))
            else:
                blocks.append(MBConv(in_chs, out_chs, s, expand, kernel))
            in_chs = out_chs
    head_chs = 1280 if lite else make_divisible(1280 * max(1.0, width_mult))
    return MobileNet(blocks, in_channels=in_channels, stem_chs=stem_chs, stem_stride=stem_stride,
                     num_classes=num_classes, block_out_chs=in_chs, head_chs=head_chs,
                     act_layer=act_layer, drop_rate=0.2, padding=padding, bn_eps=bn_eps)


@register_model
def efficientnet_b0(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                    small_input: bool = False,
                    padding: str = "symmetric", bn_eps: float = 1e-5) -> MobileNet:
    return _efficientnet(lite=False, num_classes=num_classes, in_channels=in_channels,
                         width_mult=width_mult, small_input=small_input,
                         padding=padding, bn_eps=bn_eps)


@register_model
def efficientnet_lite0(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                       small_input: bool = False,
                       padding: str = "symmetric", bn_eps: float = 1e-5) -> MobileNet:
    return _efficientnet(lite=True, num_classes=num_classes, in_channels=in_channels,
                         width_mult=width_mult, small_input=small_input,
                         padding=padding, bn_eps=bn_eps)
