"""MobileNetV1 (Howard et al. 2017) with ReLU6: a stack of depthwise-separable blocks."""

from __future__ import annotations

from edgecnn.models.blocks import DepthwiseSeparable, make_divisible
from edgecnn.models.net import MobileNet, input_strides
from edgecnn.models.registry import register_model

# [out_channels, stride] per DepthwiseSeparable block
ARCH = [[64, 1], [128, 2], [128, 1], [256, 2], [256, 1], [512, 2],
        [512, 1], [512, 1], [512, 1], [512, 1], [512, 1], [1024, 2], [1024, 1]]


def dsc_stack(arch: list[list[int]], *, stem_chs: int, num_classes: int, in_channels: int,
              width_mult: float, small_input: bool, padding: str = "symmetric",
              bn_eps: float = 1e-5) -> MobileNet:
    """A stem conv then one DepthwiseSeparable block per `[out_channels, stride]` row."""
    stem_stride, strides = input_strides([s for _, s in arch], small_input)
    in_chs = stem = make_divisible(stem_chs * width_mult)
    blocks = []
    for (chs, _), stride in zip(arch, strides, strict=True):
        out_chs = make_divisible(chs * width_mult)
        blocks.append(DepthwiseSeparable(in_chs, out_chs, stride))
        in_chs = out_chs
    return MobileNet(blocks, in_channels=in_channels, stem_chs=stem, stem_stride=stem_stride,
                     num_classes=num_classes, block_out_chs=in_chs, padding=padding,
                     bn_eps=bn_eps)


@register_model
def mobilenet_v1(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 small_input: bool = False,
                 padding: str = "symmetric", bn_eps: float = 1e-5) -> MobileNet:
    return dsc_stack(ARCH, stem_chs=32, num_classes=num_classes, in_channels=in_channels,
                     width_mult=width_mult, small_input=small_input,
                     padding=padding, bn_eps=bn_eps)
