"""Mobile CNN building blocks as in the MobileNet, MobileNetV2 and EfficientNet papers.

Blocks take their layer types as arguments (`act_layer`, `se_layer`) and keep
stable submodule names (conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3):
checkpoints and quantization patterns rely on them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LayerFn = Callable[..., nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor`, never dropping more than 10%."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation; 'same' padding for odd kernels."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act_layer: LayerFn | None = nn.ReLU6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act_layer() if act_layer else nn.Identity()


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 reduce, activation, 1x1 expand, sigmoid gate, multiply."""

    def __init__(self, in_chs: int, rd_chs: int, act_layer: LayerFn = nn.SiLU,
                 gate_layer: LayerFn = nn.Sigmoid) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_chs, rd_chs, 1)
        self.act = act_layer()
        self.conv_expand = nn.Conv2d(rd_chs, in_chs, 1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_reduce(s)
        s = self.act(s)
        s = self.conv_expand(s)
        return x * self.gate(s)


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 block: 3x3 depthwise + BN + act, then 1x1 pointwise + BN + act."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, kernel_size: int = 3,
                 act_layer: LayerFn = nn.ReLU6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel_size, stride, kernel_size // 2,
                                 groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = act_layer()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_dw(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv_pw(x)
        x = self.bn2(x)
        return self.act2(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 / MBConv block: 1x1 expand, kxk depthwise, optional SE, 1x1 linear projection.

    The expansion is skipped when `expand_ratio` is 1; the residual is used only
    when stride is 1 and input and output channels match.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 6.0,
                 kernel_size: int = 3, act_layer: LayerFn = nn.ReLU6,
                 se_layer: LayerFn | None = None) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * expand_ratio)
        self.has_residual = stride == 1 and in_chs == out_chs
        if expand_ratio != 1:
            self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid_chs)
            self.act1 = act_layer()
        else:
            mid_chs = in_chs
            self.conv_pw = self.bn1 = self.act1 = nn.Identity()
        self.conv_dw = nn.Conv2d(mid_chs, mid_chs, kernel_size, stride, kernel_size // 2,
                                 groups=mid_chs, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = act_layer()
        self.se = se_layer(mid_chs) if se_layer else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_pw(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.act2(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        if self.has_residual:
            x = x + shortcut
        return x


class MBConv(InvertedResidual):
    """EfficientNet block: inverted residual with SE after the depthwise conv, SiLU, k 3 or 5.

    The SE bottleneck is `se_ratio` of the block's *input* channels, as in the paper.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 6.0,
                 kernel_size: int = 3, act_layer: LayerFn = nn.SiLU,
                 se_ratio: float = 0.25) -> None:
        rd_chs = max(1, int(in_chs * se_ratio))
        se_layer = (lambda chs: SqueezeExcite(chs, rd_chs, act_layer)) if se_ratio else None
        super().__init__(in_chs, out_chs, stride, expand_ratio, kernel_size, act_layer, se_layer)


class ClassifierHead(nn.Module):
    """Global average pool, flatten, [linear + activation: MobileNetV3's pre-logits], dropout,
    linear: resolution-agnostic."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.0,
                 hidden_chs: int | None = None, act_layer: LayerFn = nn.Hardswish) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.pre_logits = (nn.Sequential(nn.Linear(in_chs, hidden_chs), act_layer())
                           if hidden_chs else nn.Identity())
        self.drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        self.fc = nn.Linear(hidden_chs or in_chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        x = self.flatten(x)
        x = self.pre_logits(x)
        x = self.drop(x)
        return self.fc(x)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, unit BN, small-normal linear, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
