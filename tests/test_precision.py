"""Selective precision (`--keep-float`) on the planted model, on the real runtimes.

The planted model at factor 300 (tests/planted_model.py: one channel of
`block.conv` 300x the others, undone in `block.proj`) loses about 35 points with
plain PTQ. Keeping the crushed tensor's writer and reader float brings the drop
back within 1 point on onnxruntime and on LiteRT; the float island agrees with
onnxruntime as any int8 file does.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecnn.errors import EdgecnnError

FACTOR = 300.0
BOTH = r"block\.(conv|proj)"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from planted_model import build_planted

    return build_planted(tmp_path_factory.mktemp("planted300"), factor=FACTOR)


@pytest.fixture(scope="module")
def kept(planted, tmp_path_factory):
    """`kept(*patterns)` -> (quantize metrics, {"onnx": path, "tflite": path})."""
    from edgecnn import pipeline
    from edgecnn.quant.run import quantize_checkpoint
    from edgecnn.quant.spec import QuantConfig

    cache: dict[tuple[str, ...], tuple[dict, dict]] = {}

    def get(*patterns: str):
        if patterns not in cache:
            out = tmp_path_factory.mktemp("kept")
            metrics = quantize_checkpoint(planted["checkpoint"], out / "q", method="ptq",
                                          config=QuantConfig(keep_float=patterns),
                                          calib_batches=8, show_progress=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onnx_path, tflite_path = pipeline.export_artifacts(
                    planted["checkpoint"], out, formats=("onnx", "tflite"), quantized=out / "q")
            cache[patterns] = metrics, {"onnx": onnx_path, "tflite": tflite_path}
        return cache[patterns]

    return get


def drops(planted, candidates) -> dict[str, float]:
    from edgecnn.runtime.validate import Bounds, run_validate

    report = run_validate(planted["fp32.onnx"], list(candidates), "digits", Bounds())
    return {c["name"]: c["drop"] for c in report["candidates"]}


def test_keep_float_on_the_crushed_tensor_brings_the_drop_back(planted, kept):
    before = drops(planted, [planted["int8.onnx"], planted["int8.tflite"]])
    assert min(before.values()) > 10.0, before  # the plant costs PTQ many points
    metrics, paths = kept(BOTH)
    assert metrics["float_layers"] == ["block.conv", "block.proj"]
    after = drops(planted, paths.values())
    assert max(after.values()) <= 1.0, (before, after)


def test_float_layers_in_the_artifacts(kept):
    from edgecnn.verify.litert import op_counts

    _, paths = kept(BOTH)
    model = onnx.load(str(paths["onnx"]))
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    float_weights = [n for n in convs if n.input[1] in inits
                     and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT]
    assert len(convs) == 4 and len(float_weights) == 2  # block.conv, block.proj
    producers = {o: n for n in model.graph.node for o in n.output}
    second = float_weights[1]
    assert producers[second.input[0]].op_type != "DequantizeLinear"  # float in, no Q/DQ
    counts = op_counts(paths["tflite"])
    assert counts["DEQUANTIZE"] == 1 and counts["QUANTIZE"] == 1 and counts["CONV_2D"] == 4


@pytest.mark.parametrize("patterns", [(BOTH,), (r"block\.conv",)])
def test_float_island_tflite_matches_onnxruntime(kept, digits, patterns):
    """The .tflite with float layers on LiteRT against the QDQ ONNX on onnxruntime: the
    int8 bar (top-1 agreement, logits within one output step). A single float layer
    between int8 tensors also stays float on onnxruntime (its WeightBiasQuantization
    would quantize the weights: `onnx_passes.float_layers_per_axis_input`)."""
    from edgecnn.runtime.session import open_session

    _, paths = kept(*patterns)
    images = digits.val_images[:200]
    with open_session(paths["onnx"]) as ort_session, \
            open_session(paths["tflite"], "ai_edge_litert") as tfl_session:
        reference = ort_session.predict(images)
        got = tfl_session.predict(images)
        step = tfl_session.output.quant.scale
    assert (reference.argmax(1) == got.argmax(1)).mean() >= 0.99
    assert (np.abs(reference - got) <= step * 1.01).mean() >= 0.99


def test_keep_float_pattern_errors(planted):
    from edgecnn import quant
    from edgecnn.quant.spec import QuantConfig

    with pytest.raises(EdgecnnError, match=r"--keep-float '\(' is not a regular expression"):
        QuantConfig(keep_float=("(",))
    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.data import load
    from edgecnn.train import to_tensors

    model, config = load_checkpoint(planted["checkpoint"])
    data = load("digits")
    x, _ = to_tensors(data.train_images[:8], data.train_labels[:8], config.preprocessing)
    with pytest.raises(EdgecnnError, match=r"--keep-float 'blok' matches no layer.*layers: "
                                           r"stem\.0, block\.conv, block\.proj, head\.0, fc"):
        quant.quantize(model, x[:2], "ptq", train_data=x, calib_batches=1,
                       config=QuantConfig(keep_float=("blok",)))


def test_keep_float_cli_error_is_one_line_before_training(edgecnn_cmd, tmp_path):
    """No checkpoint: the pattern is checked on the untrained model, before any epoch."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([*edgecnn_cmd, "export", "--int8", "planted_model:planted_net",
                             "--ptq", "--keep-float", "nothing", "--out", str(tmp_path / "a")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--keep-float 'nothing' matches no layer" in lines[0], lines
    assert "block.conv" in lines[0]
    assert not (tmp_path / "a" / "checkpoint" / "checkpoint.pt").exists()


# --- accuracy-aware fallback (`export --int8 --fallback float`) -----------------------------

PLANTED_LAYERS = ["stem.0", "block.conv", "block.proj", "head.0", "fc"]


def test_ranking_on_the_training_tail_puts_the_planted_pair_first(planted):
    """inspect on held-out training images ranks block.proj worst; its group brings the
    writer of the crushed tensor it reads, block.conv."""
    from edgecnn.fallback import HOLDOUT_IMAGES, rank_groups
    from edgecnn.verify.inspect import run_inspect

    report = run_inspect(planted["fp32.onnx"], planted["int8.tflite"], "digits",
                         images=HOLDOUT_IMAGES, split="train_tail")
    groups = rank_groups(report, PLANTED_LAYERS)
    assert groups[0] == ["block.proj", "block.conv"], groups
    assert all(name in PLANTED_LAYERS for group in groups for name in group)


def test_fallback_float_brings_the_drop_back_and_reports_it(planted, tmp_path):
    from edgecnn.pipeline import export_int8

    report = export_int8("planted_model:planted_net", checkpoint=planted["checkpoint"],
                         method="ptq", fallback="float", max_drop=1.0, min_agreement=0.9,
                         out=tmp_path / "out", bench_runs=20, show_progress=False)
    record = report.data["fallback"]
    first, last = record["steps"][0], record["steps"][-1]
    assert min(first["drops"].values()) > 10.0, first
    assert max(last["drops"].values()) <= 1.0 and record["within_bound"], last
    assert {"block.conv", "block.proj"} <= set(record["moved"])
    assert record["ranking"]["worst"][0]["layer"] == "block.proj"
    assert all(set(s["p50_ms"]) == {"model_int8.onnx", "model_int8.tflite"}
               for s in record["steps"])
    assert set(report.data["float_layers"]) == set(record["moved"])
    assert report.passed, report.failures()
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Fallback to float" in markdown and "block.proj, block.conv" in markdown


# --- the converter's float layers, on a hand-built QDQ graph (no torch) ---------------------

def _float_conv_model(declared: bool) -> onnx.ModelProto:
    """Q(x) -> Conv with float weights (one output channel 100x the others) -> Q."""
    from qdq_graphs import QDQGraph

    RNG = np.random.default_rng(7)

    from edgecnn.config import ArtifactMetadata, Preprocessing
    from edgecnn.export.onnx import attach_metadata
    from edgecnn.export.onnx_passes import float_layers_per_axis_input

    g = QDQGraph()
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w[0] *= 100.0
    c = g.op("Conv", [g.qdq("x", 0.02, 0), g.const("w", w)], "c", pads=[1, 1, 1, 1])
    model = float_layers_per_axis_input(g.model({"x": (1, 3, 8, 8)},
                                                g.qdq(c, 0.5, 0, tag="c_out")))
    extra = {"float_weights": "float"} if declared else {}
    attach_metadata(model, ArtifactMetadata(
        Preprocessing((8, 8), 3, (0.0,) * 3, (1.0,) * 3, tuple("ab")), precision="int8",
        extra=extra))
    return model


def test_declared_float_layer_runs_in_float_on_both_runtimes():
    """With the record's float_weights = "float", the conv stays float in the .tflite
    (DEQUANTIZE / CONV_2D / QUANTIZE) and on onnxruntime (its input DequantizeLinear is
    per axis, so WeightBiasQuantization leaves it alone): within one output step of each
    other. Without the record, the converter quantizes the weights, as before."""
    from qdq_graphs import steps_off

    X = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)

    from edgecnn.export.tflite import ConversionWarning, to_flatbuffer
    from edgecnn.verify.litert import op_counts

    model = _float_conv_model(declared=True)
    x = X[:, :3]
    with pytest.warns(ConversionWarning, match="float layers of the QDQ model"):
        data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"DEQUANTIZE": 1, "CONV_2D": 1, "QUANTIZE": 1}
    assert steps_off(model, data, x) <= 1
    with pytest.warns(ConversionWarning, match="float weights of an int8 op quantized"):
        quantized = to_flatbuffer(_float_conv_model(declared=False))
    assert dict(op_counts(quantized)) == {"CONV_2D": 1}


def _entry(tensor, layer, op, own, inputs):
    return {"tensor": tensor, "layer": layer, "op": op, "inputs": inputs,
            "runtimes": {"xnnpack": {"own_sqnr_db": own}}}


def test_rank_groups_order_inputs_writers_and_the_first_layer():
    """Lowest own SQNR first, each with the writers of its inputs; a layer reading the
    model input moves only with io float; non-weighted entries bring their writers;
    exact layers (own SQNR inf, null in JSON) never move."""
    from edgecnn.fallback import markdown, rank_groups

    report = {"runtimes": ["xnnpack"], "layers": [
        _entry("input", "input", "input", 50.0, []),
        _entry("a", "stem", "CONV_2D", 5.0, ["input"]),
        _entry("b", "conv1", "CONV_2D", 30.0, ["a"]),
        _entry("c", "add_1", "ADD", 10.0, ["a", "b"]),
        _entry("d", "fc", "FULLY_CONNECTED", None, ["c"])]}
    layers = ["stem", "conv1", "fc"]
    assert rank_groups(report, layers) == [["conv1"]]  # add_1's writers, stem aside
    assert rank_groups(report, layers, float_input=True) == [["stem"], ["stem", "conv1"]]
    record = {"mode": "float", "max_drop": 1.0, "within_bound": True, "moved": [],
              "ranking": {}, "steps": [{"moved": [], "float_layers": [], "drops": {"m": 0.2},
                                        "p50_ms": {}}]}
    assert "nothing moved" in "\n".join(markdown(record))


def test_keep_float_under_qat_folds_the_float_layers_bn(tmp_path):
    """QAT keeps a conv + BN float too (torchao's QAT conv-BN rewrite runs on it; the
    export folds the BN scale into float weights): onnxruntime and LiteRT compute what the
    converted program computes."""
    import torch
    from planted_model import planted_net

    from edgecnn import quant
    from edgecnn.config import Preprocessing
    from edgecnn.export import onnx as onnx_export
    from edgecnn.export.tflite import convert
    from edgecnn.quant.precision import float_layers
    from edgecnn.quant.qat import QATConfig
    from edgecnn.quant.spec import QuantConfig
    from edgecnn.runtime.session import open_session

    torch.manual_seed(0)
    x, y = torch.rand(128, 1, 32, 32), torch.randint(0, 10, (128,))
    program = quant.quantize(planted_net().eval(), x[:2], "qat", train_data=(x, y),
                             qat_config=QATConfig(epochs=1),
                             config=QuantConfig(keep_float=(r"head\.0", r"block\.proj")))
    assert float_layers(program) == ["block.proj", "head.0"]
    record = Preprocessing((32, 32), 1, (0.0,), (1.0,), tuple("0123456789"))
    path = onnx_export.export_qdq(program, record, tmp_path / "m.onnx")
    assert not any(n.op_type.startswith("BatchNorm") for n in onnx.load(str(path)).graph.node)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tflite = convert(path, tmp_path / "m.tflite")
    expected = program(x[:16]).detach().numpy()
    with open_session(path) as ort_session, open_session(tflite, "ai_edge_litert") as tfl:
        got_ort = ort_session.run(x[:16].numpy())
        got_tfl = tfl.run(x[:16].numpy().transpose(0, 2, 3, 1))
        step = tfl.output.quant.scale
    assert np.abs(got_ort - expected).max() <= step * 1.01
    assert np.abs(got_tfl - got_ort).max() <= step * 1.01
