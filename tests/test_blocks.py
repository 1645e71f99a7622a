"""Blocks of the CNN literature beyond the zoo, through the user's path: PTQ with edgecnn's
quantizer, the int8 ONNX as shipped, the full-int8 .tflite converted from it. Each block's
.tflite (XNNPACK) must agree with onnxruntime and with the fake-quant program on top-1 and
keep 99% of logits within one output step, with no op left float, except the ops with no
int8 TFLite kernel (LayerNorm, GroupNorm): float islands, each between one DEQUANTIZE and
one QUANTIZE, named by the quantizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")

from int8_files import Int8Files, images, preprocessing  # noqa: E402
from user_models import convnext_block, groupnorm_context_block  # noqa: E402

from edgecnn.export import onnx as onnx_export  # noqa: E402
from edgecnn.export.tflite import convert  # noqa: E402
from edgecnn.models import create_model  # noqa: E402
from edgecnn.quant.precision import float_islands  # noqa: E402
from edgecnn.quant.quantizer import UnquantizedOpWarning  # noqa: E402
from edgecnn.verify.litert import delegate_coverage, op_counts, run_images  # noqa: E402


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


def _set_bn_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, as a trained model has."""
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def mobilenet_v3_small() -> nn.Module:
    """The zoo's MobileNetV3-Small in small-input mode (stem stride 1)."""
    return create_model("mobilenet_v3_small", num_classes=10, small_input=True)


BLOCKS = {
    # int8 hardswish is MUL / ADD / MUL (3 x 2 MUL), + the SE gate's and hard-sigmoid's MUL
    "mobilenet_v3": (MobileNetV3Block, {"HARD_SWISH": 0, "MUL": 8, "DEPTHWISE_CONV_2D": 1}),
    # bn1 (its conv also feeds the residual) and bn_out are standalone; bn2 folds
    "preact_resnet": (PreActResNetBlock, {"DEPTHWISE_CONV_2D": 2}),
    "channels_last_head": (ChannelsLastHead, {"STRIDED_SLICE": 1, "LEAKY_RELU": 1,
                                              "PRELU": 1}),
    "convmixer": (ConvMixer, {"GELU": 3, "DEPTHWISE_CONV_2D": 4}),  # 1 conv + 3 lone BNs
    "upsampling_decoder": (UpsamplingDecoder, {"RESIZE_NEAREST_NEIGHBOR": 1,
                                               "RESIZE_BILINEAR": 1}),
    "transposed_conv_decoder": (TransposedConvDecoder, {"TRANSPOSE_CONV": 2,
                                                        "STRIDED_SLICE": 1}),
    "mobilenet_v4_uib": (MobileNetV4Blocks, {"DEPTHWISE_CONV_2D": 3}),
    # ghost1's slice keeps all 24 channels (the export drops it); ghost2's cuts 16 to 15
    "ghostnet": (GhostBottleneck, {"CONCATENATION": 2, "STRIDED_SLICE": 1}),
    "lcnet": (LCNetBlocks, {"HARD_SWISH": 0, "DEPTHWISE_CONV_2D": 2}),
    "mnasnet": (MnasNetBlocks, {"DEPTHWISE_CONV_2D": 2, "LOGISTIC": 1}),
    # the [N, C, H, W] -> [N, C, HW] view of an NHWC tensor is a TRANSPOSE
    "global_context": (GlobalContextBlock, {"BATCH_MATMUL": 1, "SOFTMAX": 1, "TRANSPOSE": 1}),
    # each shuffle is RESHAPE -> TRANSPOSE -> RESHAPE on the NHWC tensor: one TRANSPOSE
    "shufflenet_v2": (ShuffleNetV2Block, {"SPLIT": 1, "TRANSPOSE": 2, "CONCATENATION": 2}),
}


def test_zoo_mobilenet_v3_small_is_full_int8(tmp_path) -> None:
    """The zoo's MobileNetV3-Small: every op int8 (11 depthwise convs, hardswish, SE gates),
    and every op inside one XNNPACK partition: its 19 hardswishes are MUL / ADD / MUL, not
    HARD_SWISH, which XNNPACK runs in float only (benchmarks/hardswish.md: the int8 file
    was slower than the fp32 one). Untrained, its logits span a few output steps, too few
    for the fidelity bars above: accuracy on digits is in test_quant_accuracy's zoo sweep."""
    torch.manual_seed(0)
    files = Int8Files(_set_bn_statistics(mobilenet_v3_small()),
                      images(16, size=32, channels=3, high=1.0), tmp_path)
    assert files.caught(UnquantizedOpWarning) == []
    counts = op_counts(files.tflite)
    assert counts["DEPTHWISE_CONV_2D"] == 11 and counts["HARD_SWISH"] == 0
    # the fp32 file's 18 MUL and 16 ADD (SE gates, hard-sigmoids, residuals), + 2 and 1
    # per hardswish
    assert counts["MUL"] == 18 + 2 * 19 and counts["ADD"] == 16 + 19, dict(counts)
    assert counts["DEQUANTIZE"] == 0 and counts["QUANTIZE"] == 0, dict(counts)
    coverage = delegate_coverage(files.tflite)
    assert coverage.outside == 0 and coverage.partitions == 1, coverage


def test_tcn_on_a_sequence_goes_to_full_int8(tmp_path) -> None:
    """Conv1d on [N, C, L]: each a CONV_2D over [N, 1, L, C], the chomps STRIDED_SLICEs,
    no TRANSPOSE (the squeeze's and the lift's cancel)."""
    torch.manual_seed(0)
    x = images(128, size=32, channels=3, high=1.0)[:, :, :1]
    files = Int8Files(TCN(), x, tmp_path)
    assert files.caught(UnquantizedOpWarning) == []
    counts = op_counts(files.tflite)
    assert counts["DEQUANTIZE"] == 0 and counts["QUANTIZE"] == 0, dict(counts)
    assert counts["CONV_2D"] == 5 and counts["STRIDED_SLICE"] == 4, dict(counts)
    assert counts["TRANSPOSE"] == 0, dict(counts)
    for reference in (files.ort, files.fake_quant):
        assert (files.litert.argmax(1) == reference.argmax(1)).mean() >= 0.99
        assert files.within_one(files.litert, reference) >= 0.99
    assert np.abs(files.fake_quant - files.fp32).max() <= 0.05 * np.ptp(files.fp32)
    # LiteRT 2.3's XNNPACK takes no standalone int8 RELU: the ReLU after each chomp runs
    # outside it (a ReLU straight after its conv is fused into it)
    assert delegate_coverage(files.tflite).outside == counts["RELU"] == 4


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_goes_to_full_int8(name: str, tmp_path) -> None:
    factory, must_have = BLOCKS[name]
    torch.manual_seed(0)
    files = Int8Files(_set_bn_statistics(factory()), images(128, size=16, channels=3,
                                                             high=1.0), tmp_path)
    assert files.caught(UnquantizedOpWarning) == []
    counts = op_counts(files.tflite)
    assert counts["DEQUANTIZE"] == 0 and counts["QUANTIZE"] == 0, dict(counts)
    for op, count in must_have.items():
        assert counts[op] == count, dict(counts)
    for reference in (files.ort, files.fake_quant):
        assert (files.litert.argmax(1) == reference.argmax(1)).mean() >= 0.99
        assert files.within_one(files.litert, reference) >= 0.99
    # and the int8 model is the fp32 model, quantized (torchao's PTQ conv-BN fold once
    # folded bn1 into the stem conv that also feeds the residual: 19% off)
    assert np.abs(files.fake_quant - files.fp32).max() <= 0.05 * np.ptp(files.fp32)


@pytest.mark.pi_venv
@pytest.mark.parametrize("name", ["mobilenet_v3", "shufflenet_v2"])
def test_block_on_tflite_runtime_2_14(name: str, tmp_path) -> None:
    """The int8 files of the MobileNetV3 (hardswish as MUL / ADD / MUL) and ShuffleNetV2
    (SPLIT, rank-5 TRANSPOSE) blocks on tflite-runtime 2.14 / numpy 1.24, with and without
    its XNNPACK delegate: top-1 as onnxruntime's, logits within one step as LiteRT's
    builtin kernels keep them (test_tflite_models' bars)."""
    from pi_env import pi_python_or_skip, run_on_pi

    pi_python_or_skip()
    torch.manual_seed(0)
    x = images(64, size=16, channels=3, high=1.0)
    files = Int8Files(_set_bn_statistics(BLOCKS[name][0]()), x, tmp_path)
    np.save(tmp_path / "x.npy", x.numpy().transpose(0, 2, 3, 1)[:, None])
    stem = str(tmp_path / "out")
    outputs, (scale, zero) = run_on_pi(tmp_path, [{"model": str(files.tflite),
                                                   "inputs": [str(tmp_path / "x.npy")],
                                                   "output": stem}])[stem]
    for runner, bar in (("delegate", 0.99), ("builtin", 0.97)):
        logits = (outputs[runner].astype(np.float32) - zero) * scale
        assert (logits.argmax(1) == files.ort.argmax(1)).mean() >= 0.99, runner
        assert files.within_one(logits, files.ort) >= bar, runner


def _set_norm_affine(model: nn.Module) -> nn.Module:
    """LayerNorm / GroupNorm scales and shifts away from 1 and 0, as a trained model has."""
    g = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
    return model.eval()


#: blocks with ops that have no int8 TFLite kernel: name -> (factory, the float islands the
#: quantizer lists, op counts of the int8 .tflite)
ISLAND_BLOCKS = {
    # the permute pair around LayerNorm / Linear / GELU / layer scale cancels (no TRANSPOSE):
    # the Linears are 1x1 CONV_2Ds on the NHWC tensor; each LayerNorm is 9 float ops
    "convnext": (convnext_block, ["norm (layer_norm)", "head_norm (layer_norm_1)"],
                 {"TRANSPOSE": 0, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 1, "GELU": 1,
                  "SQRT": 2, "DIV": 2, "FULLY_CONNECTED": 1}),
    # GroupNorm(1, C) is one normalization over the NHWC tensor (no reshape, no TRANSPOSE);
    # the one TRANSPOSE is the model's [N, C, H, W] -> [N, C, HW] view before the MatMul
    "groupnorm_context": (groupnorm_context_block,
                          ["norm (group_norm)", "transform.1 (group_norm_1)"],
                          {"TRANSPOSE": 1, "BATCH_MATMUL": 1, "SOFTMAX": 1, "SQRT": 2,
                           "DIV": 2}),
}


@pytest.mark.parametrize("name", list(ISLAND_BLOCKS))
def test_block_with_float_islands(name: str, tmp_path) -> None:
    """No --keep-float: the normalizations stay float by themselves (no UnquantizedOpWarning),
    the quantizer names them, the converter runs each between one DEQUANTIZE and one
    QUANTIZE and says so; the rest is int8 and meets the blocks' bars. The fp32 .tflite
    of the same model matches its ONNX."""
    factory, islands, must_have = ISLAND_BLOCKS[name]
    torch.manual_seed(0)
    model = _set_norm_affine(factory(10, 3))
    x = images(128, size=16, channels=3, high=1.0)
    files = Int8Files(model, x, tmp_path)
    assert files.caught(UnquantizedOpWarning) == []
    assert float_islands(files.converted) == islands
    notes = " ".join(w for w in files.caught(UserWarning) if "float islands" in w)
    assert f"{len(islands)} op(s): run in float" in notes, notes
    counts = op_counts(files.tflite)
    assert counts["DEQUANTIZE"] == counts["QUANTIZE"] == len(islands), dict(counts)
    for op, count in must_have.items():
        assert counts[op] == count, dict(counts)
    for reference in (files.ort, files.fake_quant):
        assert (files.litert.argmax(1) == reference.argmax(1)).mean() >= 0.99
        assert files.within_one(files.litert, reference) >= 0.99
    assert np.abs(files.fake_quant - files.fp32).max() <= 0.05 * np.ptp(files.fp32)
    fp32_onnx = onnx_export.export_fp32(model, preprocessing(x, 10), tmp_path / "fp32.onnx")
    fp32_tflite = convert(fp32_onnx, tmp_path / "fp32.tflite")
    assert op_counts(fp32_tflite)["TRANSPOSE"] == must_have["TRANSPOSE"]
    out, _ = run_images(fp32_tflite, x.numpy())
    assert np.abs(out - files.fp32).max() <= 1e-4 * np.abs(files.fp32).max()
