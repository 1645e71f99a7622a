"""A small CNN with one planted bad layer, for the per-layer error analysis (`inspect`).

`planted_net` is a plain conv stack (usable as `tests.planted_model:planted_net`
wherever a `package.module:factory` model is accepted). `plant(model)` then
scales one output channel of `block.conv` by `factor` (weights and bias; the
ReLU after it commutes with a positive scale) and divides the matching input
channel of `block.proj` by the same factor. The fp32 function is unchanged, but
that one channel's activations become `factor` times the others, so the per-
tensor int8 range of `block.conv`'s output leaves the other channels a few
quantization steps: PTQ loses accuracy there, and only there.
"""

from __future__ import annotations

import torch
from torch import nn

PLANTED_LAYER = "block.conv"  # the layer whose output range is planted
UNDOING_LAYER = "block.proj"  # the layer that undoes the scale (fp32 stays the same)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class PlantedBlock(nn.Module):
    """conv 3x3 (+bias, ReLU), the planted layer; proj 1x1 (+BN, ReLU), the undoing one."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, mid, 3, 1, 1, bias=True)
        self.act = nn.ReLU()
        self.proj = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn(self.proj(self.act(self.conv(x)))))


class PlantedNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, 16, 3, 2)
        self.block = PlantedBlock(16, 16, 32)
        self.head = ConvBNReLU(32, 32, 3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def planted_net(*, num_classes: int = 10, in_channels: int = 1, **_: object) -> PlantedNet:
    """The un-planted network (plant after training with `plant`)."""
    return PlantedNet(num_classes, in_channels)


@torch.no_grad()
def plant(model: PlantedNet, channel: int | None = None, factor: float = 100.0) -> int:
    """Scale `block.conv`'s output `channel` by `factor` and undo it in `block.proj`;
    returns the channel (default: the one with the largest mean activation on nothing
    in particular: channel 0). The fp32 function is unchanged up to rounding."""
    channel = 0 if channel is None else channel
    block = model.block
    block.conv.weight[channel] *= factor
    block.conv.bias[channel] *= factor
    block.proj.weight[:, channel] /= factor
    return channel
