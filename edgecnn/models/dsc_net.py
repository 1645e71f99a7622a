"""dsc_net: a small stack of depthwise-separable blocks, fast enough for tests and demos."""

from __future__ import annotations

from edgecnn.models.blocks import DepthwiseSeparable, make_divisible
from edgecnn.models.net import MobileNet, input_strides
from edgecnn.models.registry import register_model

# [out_channels, stride] per DepthwiseSeparable block
ARCH = [[32, 1], [64, 2], [64, 1], [128, 2], [128, 1], [256, 2]]


@register_model
def dsc_net(*, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
            small_input: bool = False) -> MobileNet:
    stem_stride, strides = input_strides([s for _, s in ARCH], small_input)
    in_chs = stem_chs = make_divisible(16 * width_mult)
    blocks = []
    for (chs, _), stride in zip(ARCH, strides, strict=True):
        out_chs = make_divisible(chs * width_mult)
        blocks.append(DepthwiseSeparable(in_chs, out_chs, stride))
        in_chs = out_chs
    return MobileNet(blocks, in_channels=in_channels, stem_chs=stem_chs, stem_stride=stem_stride,
                     num_classes=num_classes, block_out_chs=in_chs)
