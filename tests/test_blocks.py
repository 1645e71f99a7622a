"""Blocks of the CNN literature beyond the zoo, through the user's path: PTQ with edgecnn's
quantizer, the int8 ONNX as shipped, the full-int8 .tflite converted from it. Each block's
.tflite (XNNPACK) must agree with onnxruntime and with the fake-quant program on top-1 and
keep 99% of logits within one output step, with no op left float, except the ops with no
int8 TFLite kernel (LayerNorm, GroupNorm): float islands, each between one DEQUANTIZE and
one QUANTIZE, named by the quantizer."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")

from int8_files import Int8Files, images, preprocessing  # noqa: E402
from user_models import BLOCKS as BLOCK_MODELS  # noqa: E402
from user_models import (  # noqa: E402
    TCN,
    ChannelsLastHead,
    ConvMixer,
    GhostBottleneck,
    GlobalContextBlock,
    LCNetBlocks,
    MnasNetBlocks,
    MobileNetV3Block,
    MobileNetV4Blocks,
    PixelNormBlock,
    PreActResNetBlock,
    ShuffleNetV2Block,
    TransposedConvDecoder,
    UpsamplingDecoder,
    convnext_block,
    groupnorm_context_block,
    groupnorm_resnet_block,
)

from edgecnn.export import onnx as onnx_export  # noqa: E402
from edgecnn.export.tflite import convert  # noqa: E402
from edgecnn.models import create_model  # noqa: E402
from edgecnn.quant.precision import float_islands  # noqa: E402
from edgecnn.quant.quantizer import UnquantizedOpWarning  # noqa: E402
from edgecnn.verify.litert import delegate_coverage, op_counts, run_images  # noqa: E402


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
    # x ** 2 is MUL(x, x); rsqrt (ONNX Sqrt -> Reciprocal) one RSQRT, exp EXP, both int8
    # (outside LiteRT's XNNPACK, on the builtin kernels)
    "pixel_norm": (PixelNormBlock, {"MUL": 3, "RSQRT": 1, "EXP": 1, "SQRT": 0, "DIV": 0}),
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
    assert_parity(files)
    assert np.abs(files.fake_quant - files.fp32).max() <= 0.05 * np.ptp(files.fp32)
    # LiteRT 2.3's XNNPACK takes no standalone int8 RELU: the ReLU after each chomp runs
    # outside it (a ReLU straight after its conv is fused into it)
    assert delegate_coverage(files.tflite).outside == counts["RELU"] == 4


def assert_parity(files) -> None:
    """The int8 .tflite (LiteRT) against onnxruntime's int8 ONNX and the fake-quant program:
    top-1 agreement and logits within one output step, each >= 99%."""
    for reference in (files.ort, files.fake_quant):
        assert (files.litert.argmax(1) == reference.argmax(1)).mean() >= 0.99
        assert files.within_one(files.litert, reference) >= 0.99


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
    assert_parity(files)
    # and the int8 model is the fp32 model, quantized (torchao's PTQ conv-BN fold once
    # folded bn1 into the stem conv that also feeds the residual: 19% off)
    assert np.abs(files.fake_quant - files.fp32).max() <= 0.05 * np.ptp(files.fp32)


@pytest.mark.pi_venv
@pytest.mark.parametrize("name", ["mobilenet_v3", "shufflenet_v2", "pixel_norm"])
def test_block_on_tflite_runtime_2_14(name: str, tmp_path) -> None:
    """The int8 files of the MobileNetV3 (hardswish as MUL / ADD / MUL), ShuffleNetV2
    (SPLIT, rank-5 TRANSPOSE) and pixel-norm (int8 RSQRT and EXP) blocks on
    tflite-runtime 2.14 / numpy 1.24, with and without
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
    # GroupNorm(8, 32): each a RESHAPE to [N, H*W, 8, 4] and back around its float chain,
    # on the NHWC tensor (torch.onnx's [N, 8, -1] reshapes once cost a TRANSPOSE each way)
    "groupnorm_resnet": (groupnorm_resnet_block,
                         ["stem_norm (group_norm)", "norm1 (group_norm_1)",
                          "norm2 (group_norm_2)"],
                         {"TRANSPOSE": 0, "RESHAPE": 6, "CONV_2D": 3, "SQRT": 3, "DIV": 3}),
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
    assert_parity(files)
    assert np.abs(files.fake_quant - files.fp32).max() <= 0.05 * np.ptp(files.fp32)
    fp32_onnx = onnx_export.export_fp32(model, preprocessing(x, 10), tmp_path / "fp32.onnx")
    fp32_tflite = convert(fp32_onnx, tmp_path / "fp32.tflite")
    assert op_counts(fp32_tflite)["TRANSPOSE"] == must_have["TRANSPOSE"]
    out, _ = run_images(fp32_tflite, x.numpy())
    assert np.abs(out - files.fp32).max() <= 1e-4 * np.abs(files.fp32).max()


def _digits_16px(images: np.ndarray) -> torch.Tensor:
    """Digits as the blocks read them: [N, 3, 16, 16] in [0, 1], the grey channel repeated
    (benchmarks/blocks.py's input)."""
    x = torch.from_numpy(np.asarray(images, np.float32) / 255.0)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)[:, :1]
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


@pytest.mark.parametrize("name", ["mobilenet_v3", "lcnet"])
def test_trained_hardswish_block_keeps_parity(name: str, digits, tmp_path) -> None:
    """A trained hard-swish block (8 epochs on digits at 16 px, benchmarks/blocks.py's
    schedule; about 10 s): its hard-swish inputs span -12..9, where random BN statistics
    give far less. Their scales are 3 / n (`qmath.hardswish_input_scale`), so the int8
    chain rounds once, as onnxruntime does: before, its gate's own rounding left 80-91%
    of the MobileNetV3 block's logits within one step of onnxruntime (benchmarks/blocks.md)."""
    from edgecnn.qmath import hardswish_gate_steps
    from edgecnn.train import TrainConfig, run_epochs

    x, y = _digits_16px(digits.train_images), torch.from_numpy(digits.train_labels)
    torch.manual_seed(0)
    model = BLOCK_MODELS[name]()
    run_epochs(model, (x, y), TrainConfig(epochs=8, lr=4e-3, batch_size=16),
               description=name, show_progress=False)
    files = Int8Files(model.eval(), _digits_16px(digits.val_images), tmp_path)
    hardswish_inputs = [n.args[0] for n in files.converted.graph.nodes
                        if n.target == torch.ops.aten.hardswish.default]
    scales = [float(n.args[1]) for n in hardswish_inputs]  # each is a DequantizeLinear
    assert scales and all(hardswish_gate_steps(s) for s in scales), scales
    assert_parity(files)


@pytest.mark.parametrize("name", ["mobilenet_v3", "convnext"])
def test_qat_block_goes_to_int8(name: str, digits, tmp_path) -> None:
    """QAT of a block with every op int8 (MobileNetV3: conv-BN folds simulated in training,
    hardswish, squeeze-excite) and of one with float islands and a permute pair
    (ConvNeXt): one epoch on 512 digits (16 px, the grey channel repeated to 3), then the
    int8 ONNX and .tflite, which agree as the PTQ files do."""
    from dataclasses import replace

    from edgecnn.quant import QAT, QAT_SCHEDULE, quantize

    x, y = _digits_16px(digits.train_images[:512]), torch.from_numpy(digits.train_labels[:512])
    vx = _digits_16px(digits.val_images)
    torch.manual_seed(0)
    model = BLOCK_MODELS[name]().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe = QAT(train=replace(QAT_SCHEDULE, epochs=1, lr=1e-3, batch_size=64))
        converted = quantize(model, x[:2], recipe, train_data=(x, y))
        onnx_path = onnx_export.export_qdq(converted, preprocessing(x, 10),
                                           tmp_path / "model_int8.onnx")
        tflite_path = convert(onnx_path, tmp_path / "model_int8.tflite")
    assert not [w for w in caught if issubclass(w.category, UnquantizedOpWarning)]
    islands = float_islands(converted)
    assert islands == ([] if name == "mobilenet_v3"
                       else ["norm (layer_norm)", "head_norm (layer_norm_1)"])
    counts = op_counts(tflite_path)
    assert counts["DEQUANTIZE"] == counts["QUANTIZE"] == len(islands), dict(counts)
    assert counts["TRANSPOSE"] == 0, dict(counts)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"input": vx.numpy()})[0]
    raw, (scale, zero) = run_images(tflite_path, vx.numpy())
    logits = (raw.astype(np.float32) - zero) * scale
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.99
    assert (np.round(np.abs(logits - reference) / scale) <= 1).mean() >= 0.99


class WithDropout(nn.Module):
    """conv-BN-ReLU, a dropout of the family (p = 0.5: a mask left on halves the logits'
    agreement), conv, mean, linear."""

    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.drop = drop
        self.conv = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.drop(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize("method", ["ptq", "qat"])
@pytest.mark.parametrize("drop", [nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
                                  nn.FeatureAlphaDropout])
def test_dropout_is_gone_from_the_int8_files(method: str, drop: type, tmp_path) -> None:
    """Every dropout of the family (aten dropout, feature_dropout, alpha_dropout,
    feature_alpha_dropout) is identity in the int8 files, PTQ (captured in eval mode) or
    QAT (captured in train mode, dropout on while fine-tuning): no rule missing, no random
    op in the ONNX, the same logits twice from the program and onnxruntime, the .tflite
    (no frozen mask) as onnxruntime. QAT once shipped Dropout2d's training-mode mask."""
    from dataclasses import replace

    from edgecnn.quant import QAT, QAT_SCHEDULE

    torch.manual_seed(0)
    x = images(64, size=10)
    recipe = QAT(train=replace(QAT_SCHEDULE, epochs=1, batch_size=16)) \
        if method == "qat" else None
    files = Int8Files(_set_bn_statistics(WithDropout(drop(0.5))), x, tmp_path, recipe,
                      labels=torch.arange(64) % 10)
    assert files.caught(UnquantizedOpWarning) == []
    ops = {node.op_type for node in onnx.load(files.onnx).graph.node}
    assert not [op for op in ops if op.startswith("Random") or op == "Dropout"], ops
    with torch.no_grad():
        assert np.array_equal(files.converted(x).numpy(), files.fake_quant)
    session = ort.InferenceSession(str(files.onnx), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"input": x.numpy()})[0], files.ort)
    assert files.steps(files.litert, files.ort) <= 1


@pytest.mark.parametrize("method", ["ptq", "qat"])
def test_batch_fold_goes_through_the_saved_program(method: str, tmp_path) -> None:
    """A reshape by the batch size (`x.reshape(n * 2, ...)`, MobileViT's unfold) through
    the real run's path: quantize (no rule missing: the shape arithmetic is not an
    activation), save, the checked load (it refused `_operator.mul` after training), the
    QDQ ONNX of the loaded program and its .tflite, which agree at batch 1 and 3."""
    from dataclasses import replace

    from user_models import BatchFold

    from edgecnn.config import ArtifactMetadata
    from edgecnn.quant import PTQ, QAT, QAT_SCHEDULE, load_program, quantize, save_program

    torch.manual_seed(0)
    x, y = images(64, size=16), torch.arange(64) % 10
    recipe = QAT(train=replace(QAT_SCHEDULE, epochs=1, batch_size=16)) \
        if method == "qat" else PTQ(calib_batches=2, batch_size=32)
    record = preprocessing(x, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)
        converted = quantize(_set_bn_statistics(BatchFold()), x[:2], recipe,
                             train_data=(x, y))
    save_program(tmp_path, converted, ArtifactMetadata(record, precision="int8"),
                 example_input=x[:2])
    program, _ = load_program(tmp_path)
    with torch.no_grad():
        for batch in (1, 3):
            assert torch.equal(program.module()(x[:batch]), converted(x[:batch]))
    proto = onnx_export.qdq_model(program, record)
    tflite = convert(proto, tmp_path / "model_int8.tflite")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    raw, (scale, zero) = run_images(tflite, x.numpy())
    logits = (raw.astype(np.float32) - zero) * scale
    reference = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(logits - reference).max() <= scale * 1.001
    assert np.allclose(session.run(None, {"input": x[:1].numpy()})[0], reference[:1], atol=1e-5)
