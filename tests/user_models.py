"""Models a user brings as `package.module:factory` (tests put this folder on PYTHONPATH)."""

from __future__ import annotations

import torch
from torch import nn


class GeluNet(nn.Module):
    """A conv net with an exact GELU, whose Erf has no int8 TFLite lowering (yet)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def gelu_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return GeluNet(num_classes, in_channels)
