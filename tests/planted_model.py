"""A small CNN with one planted bad layer, for the per-layer error analysis (`inspect`).

`planted_net` is a plain conv stack (usable as `planted_model:planted_net`
wherever a `package.module:factory` model is accepted). `plant(model)` then
scales one output channel of `block.conv` by `factor` (weights and bias; the
ReLU after it commutes with a positive scale) and divides the matching input
channel of `block.proj` by the same factor. The fp32 function is unchanged, but
that one channel's activations become `factor` times the others, so the per-
tensor int8 range of `block.conv`'s output leaves the other channels a few
quantization steps. How much accuracy that costs depends on the factor: trained 3
epochs (76% on digits), PTQ keeps the accuracy at 100 (the other channels keep
about 10 dB SQNR) and falls to 18% at 300 (measured with `build_planted`'s
recipe; pass `factor` for a model whose drop a fallback must fix).

`planted_dw_net` undoes the scale in a 1x1 depthwise conv (`block.dw`) between the two:
its per-channel int8 weights hold the 1/factor exactly, so the damage is the activation
range alone, which int16 (16x8) activations repair. In `planted_net` the 1/factor sits
in one input column of `block.proj`'s per-output-channel int8 weights, which rounds it
to nothing: only float repairs that.
"""

from __future__ import annotations

from pathlib import Path

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

    def __init__(self, cin: int, mid: int, cout: int, depthwise_undo: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, mid, 3, 1, 1, bias=True)
        self.act = nn.ReLU()
        if depthwise_undo:
            self.dw = nn.Conv2d(mid, mid, 1, groups=mid, bias=False)
        self.proj = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        if hasattr(self, "dw"):
            x = self.dw(x)
        return self.act2(self.bn(self.proj(x)))


class PlantedNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, depthwise_undo: bool = False) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, 16, 3, 2)
        self.block = PlantedBlock(16, 16, 32, depthwise_undo)
        self.head = ConvBNReLU(32, 32, 3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def planted_net(*, num_classes: int = 10, in_channels: int = 1, **_: object) -> PlantedNet:
    """The un-planted network (plant after training with `plant`)."""
    return PlantedNet(num_classes, in_channels)


def planted_dw_net(*, num_classes: int = 10, in_channels: int = 1, **_: object) -> PlantedNet:
    """The un-planted network whose plant a 1x1 depthwise conv undoes (`block.dw`)."""
    return PlantedNet(num_classes, in_channels, depthwise_undo=True)


@torch.no_grad()
def plant(model: PlantedNet, channel: int | None = None, factor: float = 100.0) -> int:
    """Scale `block.conv`'s output `channel` by `factor` and undo it in `block.proj`;
    returns the channel (default 0). The fp32 function is unchanged up to rounding."""
    channel = 0 if channel is None else channel
    block = model.block
    block.conv.weight[channel] *= factor
    block.conv.bias[channel] *= factor
    if hasattr(block, "dw"):
        block.dw.weight[channel] /= factor
    else:
        block.proj.weight[:, channel] /= factor
    return channel


def build_planted(directory: Path, *, epochs: int = 3, lr: float = 1e-2, factor: float = 100.0,
                  calib_batches: int = 8, factory: str = "planted_net") -> dict[str, Path]:
    """Train `factory` (`planted_net`, `planted_dw_net`) on digits (seed 0), plant it,
    PTQ it (calibrated on the training split) and write model_fp32/int8 .onnx and .tflite
    into `directory`;
    also `checkpoint/` (the planted fp32 weights, for `--checkpoint` runs) and
    `qdq_ort.onnx` (onnxruntime's quantize_static of the fp32 file, per-channel
    weights, int8 activations, the same calibration images)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from edgecnn import quant
    from edgecnn.checkpoint import ModelConfig, save_checkpoint
    from edgecnn.data import load
    from edgecnn.export import onnx as onnx_export
    from edgecnn.export.tflite import convert
    from edgecnn.train import TrainConfig, model_options_for, preprocessing_for, to_tensors, train

    directory = Path(directory)
    data = load("digits")
    preprocessing = preprocessing_for(data)
    torch.manual_seed(0)
    model = globals()[factory](num_classes=data.num_classes, in_channels=data.channels)
    train(model, data, preprocessing, TrainConfig(epochs=epochs, lr=lr), show_progress=False)
    model.eval()
    plant(model, factor=factor)
    save_checkpoint(directory / "checkpoint", model, ModelConfig(
        f"planted_model:{factory}", preprocessing, model_options_for(preprocessing),
        "digits"))
    x, _ = to_tensors(data.train_images, data.train_labels, preprocessing)
    program = quant.quantize(model, x[:2], quant.PTQ(calib_batches=calib_batches), train_data=x)
    paths = {"fp32.onnx": onnx_export.export_fp32(model, preprocessing,
                                                  directory / "model_fp32.onnx"),
             "int8.onnx": onnx_export.export_qdq(program, preprocessing,
                                                  directory / "model_int8.onnx")}
    paths["fp32.tflite"] = convert(paths["fp32.onnx"], directory / "model_fp32.tflite",
                                   io="float")
    paths["int8.tflite"] = convert(paths["int8.onnx"], directory / "model_int8.tflite")
    calibration = x[:calib_batches * 64].numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i:i + 64]}
                                 for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.batches, None)

    paths["qdq_ort.onnx"] = directory / "qdq_ort.onnx"
    quantize_static(paths["fp32.onnx"], paths["qdq_ort.onnx"], Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    paths["checkpoint"] = directory / "checkpoint"
    return paths


class ResidualBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, the residual add, ReLU: the add of a ResNet basic block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(channels, channels, 3)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn(self.conv2(self.conv1(x))))


class ResidualNet(nn.Module):
    """stem -> max pool -> residual block (add) -> mean over H, W -> linear: the pool, add
    and mean a `--int16` pattern may name besides conv / linear layers."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, 16, 3)
        self.pool = nn.MaxPool2d(2)
        self.block = ResidualBlock(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.pool(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def residual_net(*, num_classes: int = 10, in_channels: int = 1, **_: object) -> ResidualNet:
    return ResidualNet(num_classes, in_channels)


class BareOpsNet(nn.Module):
    """stem -> conv + a residual add with no activation after it -> a gating mul (sigmoid of
    a 1x1 conv) -> mean -> linear: a bare add and mul, whose ONNX tensors the exporter's
    decomposition renumbers (`add` -> `add_55`) unless edgecnn names them back."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, 8, 3, 2)
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv(x) + x
        return self.fc((y * torch.sigmoid(self.gate(y))).mean((2, 3)))


def bare_ops_net(*, num_classes: int = 10, in_channels: int = 1, **_: object) -> BareOpsNet:
    return BareOpsNet(num_classes, in_channels)


def build_residual(directory: Path, *, epochs: int = 4) -> dict[str, Path]:
    """Train `residual_net` on digits (seed 0; 66% after 4 epochs); write `checkpoint/` and
    model_fp32.onnx."""
    from edgecnn.checkpoint import ModelConfig, save_checkpoint
    from edgecnn.data import load
    from edgecnn.export import onnx as onnx_export
    from edgecnn.train import TrainConfig, model_options_for, preprocessing_for, train

    directory = Path(directory)
    data = load("digits")
    preprocessing = preprocessing_for(data)
    torch.manual_seed(0)
    model = residual_net(num_classes=data.num_classes, in_channels=data.channels)
    train(model, data, preprocessing, TrainConfig(epochs=epochs, lr=2e-2), show_progress=False)
    model.eval()
    save_checkpoint(directory / "checkpoint", model, ModelConfig(
        "planted_model:residual_net", preprocessing, model_options_for(preprocessing),
        "digits"))
    return {"checkpoint": directory / "checkpoint",
            "fp32.onnx": onnx_export.export_fp32(model, preprocessing,
                                                 directory / "model_fp32.onnx")}
