"""Models a user brings as `package.module:factory` (tests put this folder on PYTHONPATH),
and the blocks of the CNN literature that tests/test_blocks.py and benchmarks/blocks.py
take through int8 (`BLOCKS`)."""

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


class GroupNormResNetBlock(nn.Module):
    """A ResNet basic block with GroupNorm(8, C) in place of BatchNorm (Wu & He, "Group
    Normalization", 2018, their ResNet setting: 32 channels, groups of 4): stem conv +
    GN + ReLU, then conv + GN + ReLU, conv + GN, the residual added, ReLU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, c: int = 32,
                 groups: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, c, 3, stride=2, padding=1, bias=False)
        self.stem_norm = nn.GroupNorm(groups, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_norm(self.stem(x)))
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.head(torch.relu(x + y).mean((2, 3)))


def groupnorm_resnet_block(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return GroupNormResNetBlock(num_classes, in_channels)


class TinyNet(nn.Module):
    """A small classifier: two stride-2 conv + BN + ReLU, global mean, linear head. The
    interface tests' models below each break one rule of a model's interface."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class TupleOut(TinyNet):
    """Returns (logits, features), as a model with an auxiliary output does."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.fc(features.mean((2, 3))), features


class SpatialOut(TinyNet):
    """A 1x1 conv head and no pooling: [N, classes, H / 4, W / 4], a segmentation map."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(num_classes, in_channels)
        self.fc = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def seven_logits(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A factory that ignores its num_classes: 7 logits."""
    return TinyNet(7, in_channels)


def imagenet_head(in_channels: int = 1) -> nn.Module:
    """A factory without a num_classes parameter: ImageNet's 1000 logits."""
    return TinyNet(1000, in_channels)


def rgb_net(num_classes: int = 10) -> nn.Module:
    """A factory without an in_channels parameter whose first convolution takes RGB."""
    return TinyNet(num_classes, 3)


def four_channel_net(num_classes: int = 10) -> nn.Module:
    """RGBA or RGB-D input: a first convolution taking 4 channels."""
    return TinyNet(num_classes, 4)


class BatchOneBranch(TinyNet):
    """A Python branch on the batch size: torch.export traces batch 2 and drops it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            x = x * 2
        return super().forward(x)


class MCDropout(TinyNet):
    """Monte-Carlo dropout: F.dropout with training=True hard-coded, random in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.dropout(self.features(x).mean((2, 3)), 0.2,
                                             training=True))


class ViewHead(TinyNet):
    """The classic head `x.view(x.size(0), -1)` after a 2x2 pool: view needs the pooled
    map contiguous, which a channels_last one is not."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(num_classes, in_channels)
        self.fc = nn.Linear(32 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 2)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class DropPath(nn.Module):
    """timm's stochastic depth: a sample's residual branch dropped in training, identity
    in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class DropPathNet(TinyNet):
    """A residual block whose branch goes through DropPath (timm's drop_path_rate)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 drop_path_rate: float = 0.2) -> None:
        super().__init__(num_classes, in_channels)
        self.block = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.drop_path = DropPath(drop_path_rate)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.drop_path(self.block(x))


class BatchFold(nn.Module):
    """Channel groups folded into the batch and back (`x.reshape(n * 2, ...)`, n =
    x.shape[0]), as MobileViT's unfold and multi-head splits do: torch.export writes the
    product as shape arithmetic (operator.mul of the dynamic batch)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        n, c, h, w = x.shape
        y = self.conv(x.reshape(n * 2, c // 2, h, w)).reshape(n, c, h, w)
        return self.fc((x + y).mean((2, 3)))


def batch_fold(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return BatchFold(num_classes, in_channels)


# -- blocks of the CNN literature (tests/test_blocks.py, benchmarks/blocks.py): 3-channel
# input, 10 classes --------------------------------------------------------------------

def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out))


class MobileNetV3Block(nn.Module):
    """Expand (hardswish), 5x5 depthwise, squeeze-excite with a hard-sigmoid gate, project,
    residual (Howard et al., "Searching for MobileNetV3", 2019)."""

    def __init__(self, c: int = 16, expand: int = 48, se: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3), nn.Hardswish())
        self.expand = nn.Sequential(conv_bn(c, expand, 1), nn.Hardswish())
        self.dw = nn.Sequential(conv_bn(expand, expand, 5, groups=expand), nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(expand, se, 1), nn.ReLU(),
                                nn.Conv2d(se, expand, 1), nn.Hardsigmoid())
        self.project = conv_bn(expand, c, 1)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(self.expand(x))
        y = self.project(y * self.se(y))
        return self.head((x + y).mean((2, 3)))


class PreActResNetBlock(nn.Module):
    """BN + ReLU before each convolution, on the residual sum: BatchNormalizations that no
    convolution absorbs (He et al., "Identity Mappings in Deep Residual Networks", 2016)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn_out = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv1(torch.relu(self.bn1(x)))
        y = self.conv2(torch.relu(self.bn2(y)))
        return self.head(torch.relu(self.bn_out(x + y)).mean((2, 3)))


class ChannelsLastHead(nn.Module):
    """A permute to channels-last, a channel slice, LeakyReLU, PReLU and arithmetic with
    constants (x / 6, x - 0.5): the small ops of ConvNeXt-, GhostNet- and TCN-style code."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3), nn.LeakyReLU(0.1))
        self.conv = nn.Sequential(conv_bn(c, 2 * c, 3, stride=2), nn.PReLU(2 * c))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.stem(x))[:, :16]          # GhostNet: slice back to the width
        x = x.permute(0, 2, 3, 1) / 6 - 0.5         # channels-last, constants
        return self.head(x.mean((1, 2)))


class ConvMixer(nn.Module):
    """Patch embedding, then depthwise 'same' conv + GELU + BN in a residual and a pointwise
    conv + GELU + BN (Trockman & Kolter, "Patches Are All You Need?", 2022): GELU and BNs
    that follow an activation, so none folds into a conv."""

    def __init__(self, c: int = 16, kernel: int = 5) -> None:
        super().__init__()
        self.patch = nn.Sequential(nn.Conv2d(3, c, 2, stride=2), nn.GELU(), nn.BatchNorm2d(c))
        self.mix = nn.Sequential(nn.Conv2d(c, c, kernel, groups=c, padding="same"), nn.GELU(),
                                 nn.BatchNorm2d(c))
        self.point = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU(), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        x = self.point(x + self.mix(x))
        return self.head(x.mean((2, 3)))


class UpsamplingDecoder(nn.Module):
    """Decoder pieces: nearest and bilinear 2x upsampling, each followed by a conv, and a
    skip connection concatenated (U-Net / FPN style)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.down = nn.Sequential(conv_bn(3, c, 3, stride=2), nn.ReLU())
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv_bn(c, c, 3),
                                 nn.ReLU())
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                                 conv_bn(2 * c, c, 3), nn.ReLU())
        self.skip = nn.Sequential(conv_bn(3, c, 1), nn.ReLU())
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.cat([self.up1(self.down(x)), self.skip(x)], 1)
        return self.head(self.up2(u).mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: view to rank 5, swap the group axes, view back."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleNetV2Block(nn.Module):
    """A stride-2 unit (both branches) and a stride-1 unit (channel split, one branch,
    concat, channel shuffle) (Ma et al., "ShuffleNet V2", 2018)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        half = c // 2
        self.stem = nn.Sequential(conv_bn(3, half, 3), nn.ReLU())
        self.down_left = nn.Sequential(conv_bn(half, half, 3, stride=2, groups=half),
                                       conv_bn(half, half, 1), nn.ReLU())
        self.down_right = nn.Sequential(conv_bn(half, half, 1), nn.ReLU(),
                                        conv_bn(half, half, 3, stride=2, groups=half),
                                        conv_bn(half, half, 1), nn.ReLU())
        self.branch = nn.Sequential(conv_bn(half, half, 1), nn.ReLU(),
                                    conv_bn(half, half, 3, groups=half),
                                    conv_bn(half, half, 1), nn.ReLU())
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = channel_shuffle(torch.cat([self.down_left(x), self.down_right(x)], 1), 2)
        kept, active = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([kept, self.branch(active)], 1), 2)
        return self.head(x.mean((2, 3)))


class TemporalBlock(nn.Module):
    """Two weight-normed dilated causal Conv1d (padding both sides, the right side chomped
    off), ReLU, and a residual through a 1x1 Conv1d (Bai et al., "An Empirical Evaluation
    of Generic Convolutional and Recurrent Networks for Sequence Modeling", 2018)."""

    def __init__(self, c_in: int, c: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.chomp = (kernel - 1) * dilation
        weight_norm = nn.utils.parametrizations.weight_norm
        self.conv1 = weight_norm(nn.Conv1d(c_in, c, kernel, padding=self.chomp,
                                           dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(c, c, kernel, padding=self.chomp,
                                           dilation=dilation))
        self.downsample = nn.Conv1d(c_in, c, 1) if c_in != c else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x)[:, :, :-self.chomp])
        y = torch.relu(self.conv2(y)[:, :, :-self.chomp])
        return torch.relu(y + self.downsample(x))


class TCN(nn.Module):
    """A temporal convolutional network over a 3-channel sensor sequence of 32 steps, fed
    as edgecnn feeds images ([N, 3, 1, 32], squeezed to [N, 3, 32]): dilations 1 and 2,
    the mean over time into a linear classifier."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.blocks = nn.Sequential(TemporalBlock(3, c, 3, 1), TemporalBlock(c, c, 3, 2))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.squeeze(2)).mean(2))


class TransposedConvDecoder(nn.Module):
    """An encoder-decoder whose decoder upsamples with learned transposed convolutions
    (2x2 stride 2 with a ReLU, and 3x3 stride 2 with output_padding), as in U-Net
    and DCGAN-style decoders."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.down = nn.Sequential(conv_bn(3, c, 3, stride=2), nn.ReLU(),
                                  conv_bn(c, 2 * c, 3, stride=2), nn.ReLU())
        self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 2, stride=2), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up2(self.up1(self.down(x))).mean((2, 3)))


class GlobalContextBlock(nn.Module):
    """Global-context attention pooling (Cao et al., "GCNet", 2019): a 1x1 conv scores each
    position, a softmax over H x W weights them, a MatMul of two activations pools the
    features, a bottleneck transform (here without its LayerNorm) is added to every
    position."""

    def __init__(self, c: int = 16, ratio: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3, stride=2), nn.ReLU())
        self.score = nn.Conv2d(c, 1, 1)
        self.transform = nn.Sequential(nn.Conv2d(c, c // ratio, 1), nn.ReLU(),
                                       nn.Conv2d(c // ratio, c, 1))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        n, c, h, w = x.shape
        weights = torch.softmax(self.score(x).view(n, 1, h * w), dim=2)  # [N, 1, HW]
        context = torch.matmul(x.view(n, c, h * w), weights.transpose(1, 2))  # [N, C, 1]
        x = x + self.transform(context.view(n, c, 1, 1))
        return self.head(x.mean((2, 3)))


class UniversalInvertedBottleneck(nn.Module):
    """MobileNetV4's UIB (Qin et al., "MobileNetV4", 2024): an optional depthwise conv
    before the expansion, the 1x1 expansion, an optional depthwise conv after it (here
    stride 2 in the first block, 'ExtraDW' with both in the second), the 1x1 projection."""

    def __init__(self, c_in: int, c: int, start_dw: int, middle_dw: int, stride: int,
                 expand: int = 4) -> None:
        super().__init__()
        wide = c_in * expand
        self.start = conv_bn(c_in, c_in, start_dw, groups=c_in) if start_dw else nn.Identity()
        self.expand = nn.Sequential(conv_bn(c_in, wide, 1), nn.ReLU())
        self.middle = nn.Sequential(conv_bn(wide, wide, middle_dw, stride, groups=wide),
                                    nn.ReLU()) if middle_dw else nn.Identity()
        self.project = conv_bn(wide, c, 1)
        self.residual = stride == 1 and c_in == c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.middle(self.expand(self.start(x))))
        return x + y if self.residual else y


class MobileNetV4Blocks(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3), nn.ReLU())
        self.blocks = nn.Sequential(UniversalInvertedBottleneck(c, c, 0, 3, 2),
                                    UniversalInvertedBottleneck(c, c, 3, 5, 1))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class GhostModule(nn.Module):
    """A 1x1 conv makes half the channels, a cheap depthwise conv the other half, concat,
    slice back to the output width (Han et al., "GhostNet", 2020)."""

    def __init__(self, c_in: int, c: int, relu: bool = True) -> None:
        super().__init__()
        self.c = c
        primary = (c + 1) // 2
        act = nn.ReLU() if relu else nn.Identity()
        self.primary = nn.Sequential(conv_bn(c_in, primary, 1), act)
        self.cheap = nn.Sequential(conv_bn(primary, primary, 3, groups=primary), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, :self.c]


class GhostBottleneck(nn.Module):
    """Ghost module, stride-2 depthwise, squeeze-excite with GhostNet's hard-sigmoid gate
    (relu6(x + 3) / 6), ghost module without ReLU, shortcut through a depthwise + 1x1."""

    def __init__(self, c: int = 15, mid: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3), nn.ReLU())
        self.ghost1 = GhostModule(c, mid)
        self.dw = conv_bn(mid, mid, 3, stride=2, groups=mid)
        self.se_reduce, self.se_expand = nn.Conv2d(mid, 8, 1), nn.Conv2d(8, mid, 1)
        self.ghost2 = GhostModule(mid, c, relu=False)
        self.shortcut = nn.Sequential(conv_bn(c, c, 3, stride=2, groups=c), conv_bn(c, c, 1))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(self.ghost1(x))
        gate = self.se_expand(torch.relu(self.se_reduce(y.mean((2, 3), keepdim=True))))
        y = self.ghost2(y * (torch.nn.functional.relu6(gate + 3) / 6))
        return self.head((y + self.shortcut(x)).mean((2, 3)))


class LCNetBlocks(nn.Module):
    """PP-LCNet (Cui et al., 2021): depthwise-separable convs with hardswish, one with a
    squeeze-excite (ReLU, hard-sigmoid), a 5x5 depthwise, and the 1x1 conv head after
    the global pool."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3, stride=2), nn.Hardswish())
        self.dw1 = nn.Sequential(conv_bn(c, c, 3, groups=c), nn.Hardswish())
        self.pw1 = nn.Sequential(conv_bn(c, 2 * c, 1), nn.Hardswish())
        self.dw2 = nn.Sequential(conv_bn(2 * c, 2 * c, 5, stride=2, groups=2 * c),
                                 nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(2 * c, c // 2, 1),
                                nn.ReLU(), nn.Conv2d(c // 2, 2 * c, 1), nn.Hardsigmoid())
        self.pw2 = nn.Sequential(conv_bn(2 * c, 2 * c, 1), nn.Hardswish())
        self.last = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(2 * c, 64, 1),
                                  nn.Hardswish(), nn.Flatten())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw2(self.pw1(self.dw1(self.stem(x))))
        return self.head(self.last(self.pw2(x * self.se(x))))


class MnasNetBlocks(nn.Module):
    """MnasNet-A1 (Tan et al., 2019): the separable first block, then MBConv6 with a 5x5
    depthwise and squeeze-excite (sigmoid gate), ReLU throughout."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 2 * c, 3), nn.ReLU())
        self.sep = nn.Sequential(conv_bn(2 * c, 2 * c, 3, groups=2 * c), nn.ReLU(),
                                 conv_bn(2 * c, c, 1))
        self.expand = nn.Sequential(conv_bn(c, 6 * c, 1), nn.ReLU())
        self.dw = nn.Sequential(conv_bn(6 * c, 6 * c, 5, groups=6 * c), nn.ReLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(6 * c, c // 4, 1),
                                nn.ReLU(), nn.Conv2d(c // 4, 6 * c, 1), nn.Sigmoid())
        self.project = conv_bn(6 * c, c, 1)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sep(self.stem(x))
        y = self.dw(self.expand(x))
        return self.head((x + self.project(y * self.se(y))).mean((2, 3)))


class PixelNormBlock(nn.Module):
    """Pixel-wise feature normalization (Karras et al., "Progressive Growing of GANs", 2018):
    each position's channel vector divided by its RMS, x * rsqrt(mean_c(x ** 2) + eps)
    (eps 1e-3: ProGAN's 1e-8 is below an int8 step of the mean and vanishes); then a conv
    whose output is scaled by exp(s), s from a 1x1 conv (a log-scale head, as box-size
    regressors predict it). x ** 2, the mean, rsqrt and exp all have int8 kernels."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3), nn.ReLU())
        self.conv = conv_bn(c, c, 3)
        self.log_scale = nn.Conv2d(c, 1, 1)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-3)
        y = self.conv(x)
        y = y * torch.exp(self.log_scale(y))
        return self.head(y.mean((2, 3)))


#: name -> factory of each block model: 3-channel images (TCN: a [N, 3, 1, L] sequence),
#: 10 classes
BLOCKS = {
    "mobilenet_v3": MobileNetV3Block, "preact_resnet": PreActResNetBlock,
    "channels_last_head": ChannelsLastHead, "convmixer": ConvMixer,
    "upsampling_decoder": UpsamplingDecoder, "transposed_conv_decoder": TransposedConvDecoder,
    "mobilenet_v4_uib": MobileNetV4Blocks, "ghostnet": GhostBottleneck, "lcnet": LCNetBlocks,
    "mnasnet": MnasNetBlocks, "global_context": GlobalContextBlock,
    "shufflenet_v2": ShuffleNetV2Block, "tcn": TCN, "pixel_norm": PixelNormBlock,
    "convnext": lambda: ConvNeXtBlock(10, 3),
    "groupnorm_context": lambda: GroupNormContextBlock(10, 3),
    "groupnorm_resnet": lambda: GroupNormResNetBlock(10, 3),
    "cumulative": lambda: CumulativeNet(10, 3),  # CumSum: no lowering, not exported
}
