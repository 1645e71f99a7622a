"""Models a user brings as `package.module:factory` (tests put this folder on PYTHONPATH)."""

from __future__ import annotations

import torch
from torch import nn


class CumulativeNet(nn.Module):
    """A small CNN with a running sum along the width (`torch.cumsum`, ONNX CumSum): TFLite's
    CUMSUM has no int8 kernel, and edgecnn has no lowering for it."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.down(x)).cumsum(3).mean((2, 3)))


def cumulative_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return CumulativeNet(num_classes, in_channels)


def raising_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A factory whose own code fails (a typo, a wrong keyword): one line naming it."""
    raise RuntimeError("boom from the factory")
