"""torchvision's MobileNetV2 and MobileNetV3 module structures, rebuilt without torchvision.

Written from torchvision/models/mobilenetv2.py and mobilenetv3.py (v0.15+): the same
nn.Sequential nesting, so `state_dict()` has torchvision's key names and order
(`features.0.0.weight`, `features.1.conv.0.0.weight`, ..., `classifier.1.bias`) and
the forward is torchvision's function. For testing the name table in
`edgecnn.models.pretrained` against an independent implementation.
"""

from __future__ import annotations

from torch import nn


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_norm_act(inp: int, oup: int, kernel: int = 3, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    """torchvision.ops.Conv2dNormActivation: conv (no bias), BN, ReLU6."""
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups,
                                   bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_norm_act(inp, hidden, kernel=1))
        layers.extend([conv_norm_act(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)])
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                   [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
        input_channel, last_channel = 32, 1280
        features: list[nn.Module] = [conv_norm_act(3, input_channel, stride=2)]
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t))
                input_channel = c
        features.append(conv_norm_act(input_channel, last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x)


# --- MobileNetV3, written from torchvision/models/mobilenetv3.py ------------------------------

def _cna(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1,
         act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv2dNormActivation with MobileNetV3's BatchNorm (eps 0.001, momentum 0.01)."""
    layers: list[nn.Module] = [
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup, eps=0.001, momentum=0.01)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = _make_divisible(channels // 4, 8)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        scale = self.fc2(nn.functional.relu(self.fc1(scale)))
        return x * nn.functional.hardsigmoid(scale)


class InvertedResidualV3(nn.Module):
    def __init__(self, inp: int, kernel: int, expanded: int, oup: int, se: bool, hs: bool,
                 stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expanded != inp:
            layers.append(_cna(inp, expanded, 1, act=act))
        layers.append(_cna(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(_cna(expanded, oup, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        return result + x if self.use_res_connect else result


#: (input, kernel, expanded, out, SE, hardswish, stride), torchvision's bneck_conf rows
V3_LARGE = [(16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2),
            (24, 3, 72, 24, False, False, 1), (24, 5, 72, 40, True, False, 2),
            (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
            (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1),
            (80, 3, 184, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
            (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
            (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1),
            (160, 5, 960, 160, True, True, 1)]
V3_SMALL = [(16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2),
            (24, 3, 88, 24, False, False, 1), (24, 5, 96, 40, True, True, 2),
            (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
            (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1),
            (48, 5, 288, 96, True, True, 2), (96, 5, 576, 96, True, True, 1),
            (96, 5, 576, 96, True, True, 1)]


class MobileNetV3(nn.Module):
    def __init__(self, setting: list[tuple], last_channel: int, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [_cna(3, setting[0][0], 3, 2, act=nn.Hardswish)]
        features += [InvertedResidualV3(*row) for row in setting]
        last_in = setting[-1][3]
        features.append(_cna(last_in, 6 * last_in, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Linear(6 * last_in, last_channel), nn.Hardswish(),
                                        nn.Dropout(p=0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def mobilenet_v3_small(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(V3_SMALL, 1024, num_classes)


def mobilenet_v3_large(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(V3_LARGE, 1280, num_classes)
