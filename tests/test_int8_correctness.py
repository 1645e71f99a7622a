"""No silent wrong numbers: the smallest reproductions of int8 bugs other tools shipped.

Each model goes the way a user's does: PTQ with edgecnn's quantizer, QDQ ONNX as
`export --int8` writes it, then the .tflite converted from it, and each step is
held against the one before it on the real runtimes (onnxruntime, LiteRT).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")

from int8_files import Int8Files, images, preprocessing  # noqa: E402

from edgecnn import quant  # noqa: E402
from edgecnn.config import ArtifactMetadata  # noqa: E402
from edgecnn.models import create_model, models  # noqa: E402
from edgecnn.quant.graph import BiasRangeWarning  # noqa: E402
from edgecnn.quant.quantizer import UnquantizedOpWarning  # noqa: E402
from edgecnn.verify.litert import op_counts  # noqa: E402

# --- 1. int32 bias overflow -------------------------------------------------------------------

class PrunedChannel(nn.Module):
    """conv + BN where BN's gamma is (nearly) 0 on channel 3 (a pruned channel): after
    folding, that channel's weights are zero or tiny and its output is about `beta`."""

    def __init__(self, beta: float, gamma: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv.weight[3] = self.conv.weight[3].abs()  # a sum that only grows
            self.bn.weight[3] = gamma
            self.bn.bias[3] = beta
            self.fc.weight[:, 3] = torch.tensor([1.0, -1.0, 0.5, -0.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("beta, gamma", [(6.0, 0.0), (6.0, 1e-4), (2.0, 0.0)],
                         ids=["pruned", "nearly_pruned", "control"])
def test_bias_beyond_int32_raises_the_weight_scale(beta: float, gamma: float,
                                                    tmp_path: Path) -> None:
    """beta 6 at input scale 0.01 and a weight scale near float32 eps needs a bias of
    5e9 steps: the weight scale of that channel rises (with a warning naming the layer)
    and the bias keeps its sign; beta 2 (1.7e9 steps) fits and moves nothing. With gamma
    1e-4 the raised channel keeps nonzero int8 weights, whose sum onnxruntime's and
    LiteRT's int32 accumulators add to the bias: it must leave room for them (at the
    edge of the range they wrapped around)."""
    files = Int8Files(PrunedChannel(beta, gamma), images(64), tmp_path)
    raised = files.caught(BiasRangeWarning)
    if beta == 6.0:
        assert len(raised) == 1 and "layer 'conv'" in raised[0] and "(3)" in raised[0]
    else:
        assert raised == []
    (conv,) = [op for op in quant.weighted_ops(files.converted) if op.node.target ==
               torch.ops.aten.conv2d.default]
    bias = conv.bias.to(torch.float64) * conv.bias_scale.to(torch.float64)
    assert bias[3] == pytest.approx(beta, rel=1e-3)
    # every artifact computes what fp32 computes, not a flipped channel
    logit_range = float(np.ptp(files.fp32))
    for name, logits in (("fake quant", files.fake_quant), ("onnxruntime", files.ort),
                         ("LiteRT", files.litert)):
        assert np.abs(logits - files.fp32).max() <= 0.05 * logit_range, name
    assert files.steps(files.litert, files.ort) <= 1


# --- 2. average pools keep their scale ------------------------------------------------------

class AdaptivePool(nn.Module):
    """A non-global adaptive average pool ((1, 4) of an 8x8 map) followed by an int8 op."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((1, 4))
        self.head = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.pool(torch.relu(self.conv(x))))
        return self.fc(x.flatten(1))


def test_non_global_average_pool_shares_its_input_quantization(tmp_path: Path) -> None:
    """The quantizer gives the pool its input's parameters (AVERAGE_POOL_2D cannot
    rescale), so the .tflite needs no requantization and keeps every QDQ scale (the
    converter checks that itself). TFLite's int8 pool rounds the integer mean half away
    from zero where onnxruntime rounds the float mean half to even: one step at a tie
    in the pool, two at most after the layers behind it (the scale bug gave 6)."""
    files = Int8Files(AdaptivePool(), images(256), tmp_path)
    counts = op_counts(files.tflite)
    assert counts["AVERAGE_POOL_2D"] == 1 and counts["QUANTIZE"] == 0
    assert files.steps(files.ort, files.fake_quant) <= 1
    assert files.steps(files.litert, files.ort) <= 2
    assert files.within_one(files.litert, files.ort) >= 0.99


# --- 3. string padding ----------------------------------------------------------------------

class SamePadding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding="same")
        self.bn = nn.BatchNorm2d(8)
        self.dilated = nn.Conv2d(8, 8, 3, padding="same", dilation=2)
        self.even = nn.Conv2d(8, 8, 2, padding="same")  # the extra pixel at the end
        self.valid = nn.Conv2d(8, 8, 3, padding="valid")
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dilated(torch.relu(self.bn(self.conv(x)))))
        return self.fc(self.valid(torch.relu(self.even(x))).mean((2, 3)))


def test_same_padded_convs_are_quantized(tmp_path: Path) -> None:
    """padding='same' / 'valid' (aten.conv2d.padding) is quantized like any conv: an
    int8 input, every op int8, the .tflite computing what the QDQ model computes. The
    even kernel's one-sided pad folds into TFLite's padding=SAME: no PAD op."""
    files = Int8Files(SamePadding(), images(64, channels=3), tmp_path)
    assert files.caught(UnquantizedOpWarning) == []
    assert len(quant.weighted_ops(files.converted)) == 5
    counts = op_counts(files.tflite)
    assert counts["CONV_2D"] == 4 and counts["PAD"] == 0
    assert counts["QUANTIZE"] == 0 and counts["DEQUANTIZE"] == 0
    assert files.steps(files.ort, files.fake_quant) <= 1
    assert files.steps(files.litert, files.ort) <= 1


def test_conv1d_same_and_even_kernels_are_quantized() -> None:
    """conv1d.padding, and an even kernel's 'same' (one extra pixel at the end, as PyTorch
    and TensorFlow pad it): annotated, with the fake-quant program close to fp32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding="same"), nn.ReLU(),
                          nn.Conv1d(4, 4, 2, padding="same"), nn.Flatten(),
                          nn.Linear(4 * 16, 3)).eval()
    x = torch.rand(32, 2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)
        converted = quant.quantize(model, x[:2], quant.PTQ(calib_batches=1), train_data=x)
    assert len(quant.weighted_ops(converted)) == 3
    with torch.no_grad():
        ref, got = model(x), converted(x)
    assert (got - ref).abs().max() <= 0.05 * (ref.max() - ref.min())


# --- 4. fixed-output heads ------------------------------------------------------------------

@pytest.mark.parametrize("head, params", [(nn.Softmax(dim=1), (1 / 256, -128)),
                                          (nn.LogSoftmax(dim=1), (16 / 256, 127))],
                         ids=["softmax", "log_softmax"])
def test_probability_head_keeps_the_output_int8(head: nn.Module, params, tmp_path: Path) -> None:
    """A softmax (log-softmax) head gets TFLite's fixed output parameters in the quantizer,
    so the .tflite ends in an int8 SOFTMAX (LOG_SOFTMAX) with an int8 output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10),
                          head)
    files = Int8Files(model, images(64), tmp_path)
    assert files.caught(UnquantizedOpWarning) == []
    counts = op_counts(files.tflite)
    assert counts["DEQUANTIZE"] == 0 and counts["QUANTIZE"] == 0
    assert (files.scale, files.zero_point) == pytest.approx(params)
    assert files.steps(files.ort, files.fake_quant) <= 1
    assert files.steps(files.litert, files.ort) <= 1


# --- 5. the quantized program holds no training data ----------------------------------------

@pytest.mark.parametrize("name", list(models))
def test_saved_program_holds_no_more_than_one_sample_batch(name: str, tmp_path: Path) -> None:
    """`save(..., example_input=x[:2])` must not write x's whole storage (here 512 images):
    the sample entry holds two images, and no entry is larger than the parameters."""
    model = create_model(name, num_classes=10, in_channels=1, small_input=True).eval()
    x = torch.rand(512, 1, 32, 32)
    converted = quant.quantize(model, x[:2], quant.PTQ(calib_batches=1, batch_size=8), train_data=x)
    meta = ArtifactMetadata(preprocessing(x, 10), model=name, precision="int8")
    path = quant.save_program(tmp_path, converted, meta, example_input=x[:2])
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    sample = x[:2].numel() * x.element_size()
    with zipfile.ZipFile(path) as archive:
        sizes = {i.filename: i.file_size for i in archive.infolist()}
    (sample_entry,) = [n for n in sizes if "sample_inputs" in n]
    assert sizes[sample_entry] <= sample + 4096
    assert max(size for n, size in sizes.items() if "/data/" in n) <= params
