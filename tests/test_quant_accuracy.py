"""int8 accuracy on digits (small-input, 32 px): PTQ and QAT against the fp32 reference.

The fp32 references come from conftest's session-wide `reference_checkpoint`
(shared with test_train.py). Budgets from the issue: PTQ drop <= 1.0 point,
QAT drop <= 0.5 point. dsc_net runs by default (the same PTQ / QAT code path as every
zoo model; the inverted residuals, adds and squeeze-excite are covered structurally by
test_quant_spec.py and end to end by test_blocks.py and test_tflite_mobilenet.py);
the zoo (mobilenet_v2 included) is the `slow` sweep.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from edgecnn.checkpoint import load_checkpoint
from edgecnn.quant import PTQ, QAT, QAT_SCHEDULE, load_program, quantize
from edgecnn.quant.run import quantize_checkpoint
from edgecnn.train import accuracy, to_tensors

BUDGET = {"ptq": 1.0, "qat": 0.5}  # accuracy-drop budget, percentage points
#: short test schedules: QAT two epochs (one is not enough since training streams through the
#: loader: dsc_net 98.05% -> 97.49%, 0.56 pp; two: 98.33%, measured 2026-11-30), PTQ
#: calibrated on 512 training images
RECIPES = {"qat": QAT(train=replace(QAT_SCHEDULE, epochs=2)), "ptq": PTQ(calib_batches=8)}


@pytest.fixture(scope="module")
def quantized(reference_checkpoint, tmp_path_factory):
    """`quantized(name, method) -> (out_dir, metrics)`, each pair computed once per module."""
    done: dict[tuple[str, str], tuple] = {}

    def get(name: str, method: str):
        if (name, method) not in done:
            out = tmp_path_factory.mktemp(f"{name}_{method}")
            metrics = quantize_checkpoint(reference_checkpoint(name), out, RECIPES[method],
                                          show_progress=False)
            print(f"\n{name} {method}: fp32 {metrics.fp32_accuracy:.4f} int8 "
                  f"{metrics.int8_accuracy:.4f} drop {metrics.accuracy_drop:.2f} points")
            done[name, method] = out, metrics
        return done[name, method]

    return get


def check_drop(quantized, name: str, method: str, record_property) -> dict:
    _, metrics = quantized(name, method)
    record_property("accuracy_drop", metrics.accuracy_drop)
    expected = 100 * (metrics.fp32_accuracy - metrics.int8_accuracy)
    assert metrics.accuracy_drop == pytest.approx(expected, abs=1e-3)
    assert metrics.method == method
    return metrics


def check_budget(metrics) -> None:
    assert metrics.fp32_accuracy >= 0.95, metrics  # a drop from a weak reference says little
    assert metrics.accuracy_drop <= BUDGET[metrics.method], metrics


@pytest.mark.parametrize("method", ["ptq", "qat"])
@pytest.mark.parametrize("name", ["dsc_net"])
def test_accuracy_drop_within_budget(quantized, name, method, record_property):
    check_budget(check_drop(quantized, name, method, record_property))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ptq", "qat"])
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v1", "efficientnet_lite0",
                                  "mobilenet_v3_small", "mobilenet_v3_large"])
def test_accuracy_drop_within_budget_rest_of_zoo(quantized, name, method, record_property):
    check_budget(check_drop(quantized, name, method, record_property))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ptq", "qat"])
def test_efficientnet_b0_swish_and_squeeze_excite_quantize(quantized, method, record_property):
    """No budget in the issue (SiLU + SE is where naive int8 collapses): the drop is reported."""
    metrics = check_drop(quantized, "efficientnet_b0", method, record_property)
    counts = metrics.node_counts
    assert "silu" not in counts and counts["sigmoid"] == 49 + 16  # SiLU units + SE gates
    assert metrics.int8_accuracy > 0.5, metrics


def test_quantize_writes_program_metrics_and_config(quantized, reference_checkpoint, digits):
    out, metrics = quantized("dsc_net", "ptq")
    written = json.loads((out / "metrics.json").read_text())
    assert written == metrics.to_dict() and type(metrics).from_dict(written) == metrics
    assert {"fp32_accuracy", "int8_accuracy", "accuracy_drop", "method"} <= set(written)
    assert (out / "config.json").read_text() == \
        (reference_checkpoint("dsc_net") / "config.json").read_text()
    program, metadata = load_program(out)
    assert metadata.precision == "int8" and metadata.model == "dsc_net"
    assert metadata.extra["quantization"]["method"] == "ptq"
    # the saved program is the fake-quant reference: it reproduces the int8 accuracy
    x, y = to_tensors(digits.val_images, digits.val_labels, metadata.preprocessing)
    assert accuracy(program.module(), x, y) == pytest.approx(written["int8_accuracy"], abs=1e-9)


def test_qat_is_deterministic_for_a_fixed_seed(reference_checkpoint, digits):
    model, config = load_checkpoint(reference_checkpoint("dsc_net"))
    x, y = to_tensors(digits.train_images[:256], digits.train_labels[:256], config.preprocessing)
    recipe = QAT(train=replace(QAT_SCHEDULE, epochs=2, seed=3))
    runs = [quantize(model, x[:2], recipe, train_data=(x, y)) for _ in range(2)]
    first, second = (dict(r.named_buffers()) | dict(r.named_parameters()) for r in runs)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    with torch.no_grad():
        assert torch.equal(runs[0](x[:32]), runs[1](x[:32]))


def test_cli_quantize(reference_checkpoint, tmp_path):
    from edgecnn.cli import app

    out = tmp_path / "int8"
    result = CliRunner().invoke(app, ["quantize", "dsc_net", "--checkpoint",
                                      str(reference_checkpoint("dsc_net")), "--out", str(out),
                                      "--method", "ptq", "--calib-batches", "2",
                                      "--observer", "histogram"])
    assert result.exit_code == 0, result.output
    assert "dsc_net ptq: fp32" in result.output and "drop" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quant_config"]["observer"] == "histogram"
    assert metrics["calib_images"] == 128
    assert (out / "model_int8.pt2").is_file()


def test_cli_quantize_names_a_bad_method(reference_checkpoint, tmp_path):
    from edgecnn.cli import app

    result = CliRunner().invoke(app, ["quantize", "dsc_net", "--checkpoint",
                                      str(reference_checkpoint("dsc_net")), "--out",
                                      str(tmp_path), "--method", "dynamic"])
    assert result.exit_code != 0
    assert result.exception.for_cli().startswith("--method 'dynamic' is unknown")
