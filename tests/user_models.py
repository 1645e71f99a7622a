"""Models a user brings as `package.module:factory` (tests put this folder on PYTHONPATH)."""

from __future__ import annotations

import torch
from torch import nn


class DeconvNet(nn.Module):
    """A small encoder-decoder with a transposed convolution, which has no TFLite lowering
    in edgecnn yet (TRANSPOSE_CONV)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.up(torch.relu(self.down(x)))).mean((2, 3)))


def deconv_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return DeconvNet(num_classes, in_channels)
