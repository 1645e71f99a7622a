"""PTQ steps against plain PTQ: cross-layer equalization (`--cle`) and bias correction
(`--bias-correction`), on real digits data and the real runtimes.

The planted model at factor 300 (tests/planted_model.py: one output channel of
`block.conv` 300x the others, undone in `block.proj`; the activation between them
is quantized per tensor) loses tens of points with plain PTQ. CLE moves the planted
scale into `block.proj`'s weights, so the drop comes back without any float layer.
"""

from __future__ import annotations

import copy
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

FACTOR = 300.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from planted_model import build_planted

    return build_planted(tmp_path_factory.mktemp("planted300"), factor=FACTOR)


class DepthwisePair(nn.Module):
    """stem conv -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.act0 = nn.ReLU6()
        self.conv_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.conv_pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pw(self.act1(self.bn1(self.conv_dw(self.act0(self.bn0(self.stem(x)))))))
        return self.fc(x.mean((2, 3)))


def channel_ranges(gm, target: str) -> torch.Tensor:
    """max |w| per output channel of the conv whose weight is `target`'s get_attr."""
    weight = dict(gm.named_parameters()).get(target)
    if weight is None:
        weight = dict(gm.named_buffers())[target]
    return weight.detach().abs().reshape(weight.shape[0], -1).amax(1)


def test_cle_keeps_fp32_and_evens_the_depthwise_ranges(digits):
    from edgecnn.quant.calibrate import capture
    from edgecnn.quant.equalize import equalize

    torch.manual_seed(0)
    model = DepthwisePair().eval()
    with torch.no_grad():
        for bn in (model.bn0, model.bn1):  # BN statistics far from identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
        model.conv_dw.weight[0] *= 50.0  # one depthwise channel 50x, undone by the next conv
        model.conv_pw.weight[:, 0] /= 50.0
    x = torch.from_numpy(digits.val_images[:64]).float().div(255.0).permute(0, 3, 1, 2).contiguous()
    before = model(x)
    gm = capture(model, x[:2], train=False)
    dw_target = next(n.target for n in gm.graph.nodes if n.target == "conv_dw.weight")
    report = equalize(gm)
    after = gm(x)
    relative = float((after - before).abs().max() / before.abs().max())
    assert relative < 1e-5, relative
    assert report.batch_norms_folded == 2
    assert report.pairs == [["conv_dw", "conv_pw"]]
    assert report.skipped_activation == [["stem", "hardtanh"]]  # ReLU6 left alone
    # the depthwise layer's spread of per-channel ranges: the BN-folded weights of the
    # planted channel were ~50x the others; equalized, every channel has the range
    # sqrt(r1 r2) and the spread is that of the geometric means
    folded = copy.deepcopy(model)
    with torch.no_grad():
        scale = folded.bn1.weight / torch.sqrt(folded.bn1.running_var + folded.bn1.eps)
        folded_ranges = (folded.conv_dw.weight.abs().reshape(8, -1).amax(1) * scale.abs())
    spread_before = float(folded_ranges.max() / folded_ranges.min())
    ranges = channel_ranges(gm, dw_target)
    spread_after = float(ranges.max() / ranges.min())
    assert spread_before > 40.0, spread_before
    assert spread_after < 5.0, (spread_before, spread_after)


def test_cle_keeps_the_zoo_models_fp32():
    """mobilenet_v2 (ReLU6: only its linear-bottleneck -> expansion pairs are equalized)
    and efficientnet_b0 (SiLU: likewise) keep their logits within 1e-5 relative."""
    from edgecnn.models import create_model
    from edgecnn.quant.calibrate import capture
    from edgecnn.quant.equalize import equalize

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name in ("mobilenet_v2", "efficientnet_b0"):
        model = create_model(name, num_classes=10).eval()
        with torch.no_grad():
            for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.running_var.uniform_(0.5, 2.0)
                bn.running_mean.uniform_(-0.2, 0.2)
        gm = capture(model, x, train=False)
        report = equalize(gm)
        assert len(report.pairs) == 2 and len(report.skipped_activation) > 30, report
        before, after = model(x), gm(x)
        relative = float((after - before).abs().max() / before.abs().max())
        assert relative < 1e-5, (name, relative)


def drops(planted, candidates) -> dict[str, float]:
    from edgecnn.runtime.validate import Bounds, run_validate

    report = run_validate(planted["fp32.onnx"], list(candidates), "digits", Bounds())
    return {c.name: c.drop for c in report.candidates}


def test_cle_brings_the_planted_drop_back_and_the_report_says_so(planted, tmp_path):
    """`export --int8 --ptq --cle --bias-correction` on the planted checkpoint: the drop on
    onnxruntime and LiteRT against plain PTQ's, and what report.json / .md record."""
    from edgecnn.pipeline import export_int8
    from edgecnn.quant.recipe import PTQ
    from edgecnn.runtime.validate import Bounds

    plain = drops(planted, [planted["int8.onnx"], planted["int8.tflite"]])
    assert min(plain.values()) > 10.0, plain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export_int8("planted_model:planted_net", reference=planted["checkpoint"],
                             recipe=PTQ(cle=True, bias_correction=True),
                             bounds=Bounds(max_drop=2.0, min_agreement=0.9),
                             out=tmp_path / "out", bench_runs=10,
                             show_progress=False)
    with_cle = {a["name"]: a["drop"] for a in report.data["artifacts"]
                if a["precision"] == "int8"}
    assert set(with_cle) == {"model_int8.onnx", "model_int8.tflite"}
    assert max(with_cle.values()) <= 2.0, (plain, with_cle)
    assert max(with_cle.values()) < min(plain.values()) - 10.0, (plain, with_cle)
    record = report.data["ptq_methods"]
    assert ["block.conv", "block.proj"] in record["cle"]["pairs"]
    assert record["bias_correction"]["layers"] == 5 and record["bias_correction"]["images"] > 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## PTQ steps" in markdown and "cross-layer equalization: 3 conv pair(s)" in markdown


def layer_mean_errors(program, weights, biases, images) -> dict[str, float]:
    """Per layer: the mean over output channels of |mean over images and positions of
    (the program's output - the float layer on the same input)|."""
    from torch.fx import Interpreter

    from edgecnn.quant.graph import WEIGHTED_OPS, calls

    sums, counts = {}, {}

    class Tap(Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if calls(n, WEIGHTED_OPS) and n.name in weights:
                args, _ = self.fetch_args_kwargs_from_env(n)
                reference = n.target(args[0], weights[n.name], biases[n.name], *args[3:])
                diff = (out - reference).movedim(1 if out.dim() == 4 else -1, 0)
                diff = diff.reshape(diff.shape[0], -1).double()
                sums[n.name] = sums.get(n.name, 0) + diff.sum(1)
                counts[n.name] = counts.get(n.name, 0) + diff.shape[1]
            return out

    with torch.no_grad():
        Tap(program).run(images)
    return {k: float((sums[k] / counts[k]).abs().mean()) for k in sums}


def test_bias_correction_reduces_the_mean_layer_error_on_held_out_images(planted):
    """Calibrated and corrected on training images, measured on the validation split: every
    layer's per-channel mean error against its float self shrinks; the corrected biases are
    int32 within the accumulator headroom (`qmath`)."""
    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.data import load
    from edgecnn.qmath import accumulator_headroom
    from edgecnn.quant.bias_correction import float_weights
    from edgecnn.quant.calibrate import calibrate, convert, prepare_ptq
    from edgecnn.quant.graph import WEIGHTED_OPS, calls, constant, weighted_ops
    from edgecnn.train import to_tensors

    model, config = load_checkpoint(planted["checkpoint"])
    data = load("digits")
    x, _ = to_tensors(data.train_images, data.train_labels, config.preprocessing)
    held_out, _ = to_tensors(data.val_images, data.val_labels, config.preprocessing)
    prepared = prepare_ptq(model, x[:2])
    calibrate(prepared, x, batches=8)
    weights = float_weights(prepared)
    biases = {n.name: constant(prepared, n.args[2]).detach().clone()
              for n in prepared.graph.nodes if calls(n, WEIGHTED_OPS)}
    plain = convert(copy.deepcopy(prepared))
    corrected = convert(copy.deepcopy(prepared), corrected_on=x, batches=8)
    assert corrected.meta["ptq"]["bias_correction"]["layers"] == 5
    before = layer_mean_errors(plain, weights, biases, held_out)
    after = layer_mean_errors(corrected, weights, biases, held_out)
    assert set(before) == set(after) and len(before) == 5
    for name in before:
        assert after[name] < 0.5 * before[name], (name, before[name], after[name])
    assert sum(after.values()) < 0.1 * sum(before.values()), (before, after)
    for op in weighted_ops(corrected):
        assert op.bias is not None and op.bias.dtype == torch.int32
        fan_in = op.weight[0].numel()
        assert int(op.bias.abs().max()) <= accumulator_headroom(fan_in), op.node.name


@pytest.mark.parametrize("args, message", [
    (["export", "--int8", "planted_model:planted_net", "--cle"],
     "--cle does not apply to QAT (PTQ only)"),
    (["export", "planted_model:planted_net", "--bias-correction"],
     "--cle and --bias-correction are PTQ steps: they go with --int8 --ptq"),
    (["quantize", "planted_model:planted_net", "--checkpoint", "nowhere", "--out", "q",
      "--cle"], "--cle does not apply to QAT (PTQ only)"),
])
def test_ptq_flag_errors_are_one_line(edgecnn_cmd, tmp_path, args, message):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([*edgecnn_cmd, *args], capture_output=True, text=True, timeout=300,
                            env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "q").exists()
