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


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block (Liu et al., "A ConvNet for the 2020s", 2022): 7x7 depthwise conv,
    permute to channels-last, LayerNorm over the channels, Linear 4x expansion, GELU,
    Linear back, layer scale, permute back, residual; a 4x4 stride-4 patchify stem with a
    channels-first LayerNorm done the same way."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, c, 2, stride=2)
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.head_norm = nn.LayerNorm(c, eps=1e-6)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dwconv(x).permute(0, 2, 3, 1)            # [N, H, W, C]
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        x = x + (self.gamma * y).permute(0, 3, 1, 2)       # layer scale, back to [N, C, H, W]
        return self.head(self.head_norm(x.mean((2, 3))))


def convnext_block(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return ConvNeXtBlock(num_classes, in_channels)


class GroupNormContextBlock(nn.Module):
    """The Global-Context block of GCNet (Cao et al., 2019) with its transform's
    normalization: a 1x1 conv scores each position, a softmax over H x W weights them, a
    MatMul of two activations pools the features, the bottleneck transform (1x1 conv,
    GroupNorm(1, C) (LayerNorm over C, H, W), ReLU, 1x1 conv) is added to every position;
    a GroupNorm(1, C) + SiLU stage after the stem."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, c: int = 16,
                 ratio: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, c, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(1, c)
        self.score = nn.Conv2d(c, 1, 1)
        self.transform = nn.Sequential(nn.Conv2d(c, c // ratio, 1), nn.GroupNorm(1, c // ratio),
                                       nn.ReLU(), nn.Conv2d(c // ratio, c, 1))
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.norm(self.stem(x)))
        n, c, h, w = x.shape
        weights = torch.softmax(self.score(x).view(n, 1, h * w), dim=2)      # [N, 1, HW]
        context = torch.matmul(x.view(n, c, h * w), weights.transpose(1, 2))  # [N, C, 1]
        x = x + self.transform(context.view(n, c, 1, 1))
        return self.head(x.mean((2, 3)))


def groupnorm_context_block(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return GroupNormContextBlock(num_classes, in_channels)
