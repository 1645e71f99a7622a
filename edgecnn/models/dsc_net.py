"""dsc_net: a small stack of depthwise-separable blocks, fast enough for tests and demos."""

from __future__ import annotations

from edgecnn.models.mobilenet_v1 import dsc_stack
from edgecnn.models.net import MobileNet
from edgecnn.models.registry import register_model

# [out_channels, stride] per DepthwiseSeparable block
ARCH = [[32, 1], [64, 2], [64, 1], [128, 2], [128, 1], [256, 2]]


@register_model
def dsc_net(*, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
            small_input: bool = False,
            padding: str = "symmetric", bn_eps: float = 1e-5) -> MobileNet:
    return dsc_stack(ARCH, stem_chs=16, num_classes=num_classes, in_channels=in_channels,
                     width_mult=width_mult, small_input=small_input,
                     padding=padding, bn_eps=bn_eps)
