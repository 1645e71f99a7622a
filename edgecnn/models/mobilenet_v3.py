"""MobileNetV3 small and large (Howard et al., "Searching for MobileNetV3", ICCV 2019).

Inverted residuals with hardswish in the later stages, 5x5 depthwise convs, and
squeeze-excite gated by a hard sigmoid; a 1x1 head conv, then a pre-logits linear
layer with hardswish. The tables are the paper's Tables 1 and 2 (as in torchvision).
"""

from __future__ import annotations

from torch import nn

from edgecnn.models.blocks import InvertedResidual, SqueezeExcite, make_divisible
from edgecnn.models.net import MobileNet, input_strides
from edgecnn.models.registry import register_model

# [kernel, expanded channels, out channels, squeeze-excite, hardswish, stride] per block
LARGE = [[3, 16, 16, False, False, 1], [3, 64, 24, False, False, 2],
         [3, 72, 24, False, False, 1], [5, 72, 40, True, False, 2],
         [5, 120, 40, True, False, 1], [5, 120, 40, True, False, 1],
         [3, 240, 80, False, True, 2], [3, 200, 80, False, True, 1],
         [3, 184, 80, False, True, 1], [3, 184, 80, False, True, 1],
         [3, 480, 112, True, True, 1], [3, 672, 112, True, True, 1],
         [5, 672, 160, True, True, 2], [5, 960, 160, True, True, 1],
         [5, 960, 160, True, True, 1]]
SMALL = [[3, 16, 16, True, False, 2], [3, 72, 24, False, False, 2],
         [3, 88, 24, False, False, 1], [5, 96, 40, True, True, 2],
         [5, 240, 40, True, True, 1], [5, 240, 40, True, True, 1],
         [5, 120, 48, True, True, 1], [5, 144, 48, True, True, 1],
         [5, 288, 96, True, True, 2], [5, 576, 96, True, True, 1],
         [5, 576, 96, True, True, 1]]


def _se(chs: int) -> SqueezeExcite:
    """Squeeze to a quarter of the expanded width, ReLU, hard-sigmoid gate."""
    return SqueezeExcite(chs, make_divisible(chs // 4), nn.ReLU, nn.Hardsigmoid)


def _mobilenet_v3(arch: list[list], *, head_chs: int, hidden_chs: int, num_classes: int,
                  in_channels: int, width_mult: float, small_input: bool, padding: str,
                  bn_eps: float) -> MobileNet:
    stem_stride, strides = input_strides([row[5] for row in arch], small_input)
    in_chs = stem_chs = make_divisible(16 * width_mult)
    blocks = []
    for (kernel, expanded, chs, se, hardswish, _), stride in zip(arch, strides, strict=True):
        out_chs, mid_chs = make_divisible(chs * width_mult), make_divisible(expanded * width_mult)
        act = nn.Hardswish if hardswish else nn.ReLU
        blocks.append(InvertedResidual(in_chs, out_chs, stride, mid_chs / in_chs, kernel, act,
                                       _se if se else None))
        in_chs = out_chs
    return MobileNet(blocks, in_channels=in_channels, stem_chs=stem_chs, stem_stride=stem_stride,
                     num_classes=num_classes, block_out_chs=in_chs,
                     head_chs=make_divisible(head_chs * width_mult), act_layer=nn.Hardswish,
                     drop_rate=0.2, head_hidden_chs=hidden_chs, padding=padding,
                     bn_eps=bn_eps)


@register_model
def mobilenet_v3_large(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                       small_input: bool = False,
                       padding: str = "symmetric", bn_eps: float = 1e-5) -> MobileNet:
    return _mobilenet_v3(LARGE, head_chs=960, hidden_chs=1280, num_classes=num_classes,
                         in_channels=in_channels, width_mult=width_mult, small_input=small_input,
                         padding=padding, bn_eps=bn_eps)


@register_model
def mobilenet_v3_small(*, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                       small_input: bool = False,
                       padding: str = "symmetric", bn_eps: float = 1e-5) -> MobileNet:
    return _mobilenet_v3(SMALL, head_chs=576, hidden_chs=1024, num_classes=num_classes,
                         in_channels=in_channels, width_mult=width_mult, small_input=small_input,
                         padding=padding, bn_eps=bn_eps)
