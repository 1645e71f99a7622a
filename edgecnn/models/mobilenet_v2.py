"""MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks, ReLU6."""

from __future__ import annotations

from edgecnn.models.blocks import InvertedResidual, make_divisible
from edgecnn.models.net import MobileNet, input_strides
from edgecnn.models.registry import register_model

# [expand_ratio, out_channels, repeats, stride] per stage
ARCH = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
        [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


@register_model
def mobilenet_v2(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 small_input: bool = False,
                 padding: str = "symmetric", bn_eps: float = 1e-5) -> MobileNet:
    stem_stride, strides = input_strides([row[3] for row in ARCH], small_input)
    in_chs = stem_chs = make_divisible(32 * width_mult)
    blocks = []
    for (expand, chs, repeats, _), stride in zip(ARCH, strides, strict=True):
        out_chs = make_divisible(chs * width_mult)
        for i in range(repeats):
            blocks.append(InvertedResidual(in_chs, out_chs, stride if i == 0 else 1, expand))
            in_chs = out_chs
    return MobileNet(blocks, in_channels=in_channels, stem_chs=stem_chs, stem_stride=stem_stride,
                     num_classes=num_classes, block_out_chs=in_chs,
                     head_chs=make_divisible(1280 * max(1.0, width_mult)), drop_rate=0.2,
                     padding=padding, bn_eps=bn_eps)
