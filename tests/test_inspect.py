"""`edgecnn inspect`: per-layer int8 error on the artifacts and runtimes that ship them.

The planted model (tests/planted_model.py) has one channel of `block.conv` scaled
by 100 and undone in `block.proj`: fp32 is unchanged, but PTQ's per-tensor range
for `block.conv`'s output leaves the other channels a few steps. inspect must put
`block.proj` (the layer that reads that tensor) first, on onnxruntime and on both
LiteRT kernel sets, and point at `block.conv`'s output as the crushed tensor.
"""

import json
import math
import subprocess

import numpy as np
import pytest

from edgecnn.errors import EdgecnnError
from edgecnn.verify.inspect import CRUSHED_DB, run_inspect, worst_layers


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from planted_model import build_planted

    return build_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def run(edgecnn_cmd, blocked_imports_env, tmp_path_factory):
    env = blocked_imports_env("torch", "torchao", "torchvision")
    cwd = tmp_path_factory.mktemp("cli")

    def run(*args):
        return subprocess.run([*edgecnn_cmd, *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=cwd, timeout=300)

    return run


def assert_planted_found(report: dict) -> None:
    by_tensor = {e["tensor"]: e for e in report["layers"]}
    for kernels in report["runtimes"]:
        first, second = worst_layers(report["layers"], kernels, 2)
        assert first["layer"] == "block.proj", (kernels, first)
        own = first["runtimes"][kernels]["own_sqnr_db"]
        assert own < 12.0 and own < second["runtimes"][kernels]["own_sqnr_db"] - 10.0
        # the tensor it reads is block.conv's output, and only that one is crushed
        crushed = [e["tensor"] for e in report["layers"]
                   if e["runtimes"][kernels]["channel_sqnr_db"]
                   < e["runtimes"][kernels]["sqnr_db"] - CRUSHED_DB]
        assert len(crushed) == 1 and crushed[0] in first["inputs"]
        assert by_tensor[crushed[0]]["layer"] == "block.conv"


@pytest.mark.parametrize("candidate", ["int8.onnx", "int8.tflite"])
def test_inspect_ranks_the_planted_layer_worst(planted, candidate):
    report = run_inspect(planted["fp32.onnx"], planted[candidate], "digits", images=16)
    pairs = {e["tensor"]: e["reference_tensor"] for e in report["layers"]}
    assert {pairs[n] for n in ("relu", "relu_1", "relu_2", "relu_3")} == {
        "relu", "relu_1", "relu_2", "relu_3"}
    assert all(pairs[n] == n for n in ("relu", "relu_1", "relu_2", "relu_3"))
    assert pairs["linear" if candidate.endswith(".onnx") else "logits"] == "logits"
    assert report["runtimes"] == (["onnxruntime"] if candidate.endswith(".onnx")
                                  else ["xnnpack", "builtin"])
    assert_planted_found(report)
    # the model input and the convolutions of a healthy stem stay near int8's best
    stem = next(e for e in report["layers"] if e["layer"] == "stem.0")
    assert all(r["sqnr_db"] > 30 for r in stem["runtimes"].values())


def test_inspect_cli_torch_free_json_and_plot(run, planted, digits_npz, tmp_path):
    """Under the torch import blocker, on the TFLite file: a table, every layer in the
    JSON with finite figures on both kernel sets, and the plot."""
    out, plot = tmp_path / "inspect.json", tmp_path / "sqnr.png"
    result = run("inspect", "--reference", planted["fp32.tflite"], "--candidate",
                 planted["int8.tflite"], "--data", f"npz:{digits_npz}", "--images", "8",
                 "--json", out, "--plot", plot, "--top", "3")
    assert result.returncode == 0, result.stderr
    assert "worst layer on xnnpack: block.proj" in result.stdout
    assert "worst layer on builtin: block.proj" in result.stdout
    report = json.loads(out.read_text())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tensors = [e["tensor"] for e in report["layers"]]
    assert {"input", "relu", "relu_1", "relu_2", "relu_3", "logits"} <= set(tensors)
    for entry in report["layers"]:
        for kernels in ("xnnpack", "builtin"):
            figures = entry["runtimes"][kernels]
            assert all(isinstance(v, float) and math.isfinite(v) for v in figures.values()), \
                (entry["tensor"], figures)
    assert_planted_found(report)


def test_inspect_quantize_static_model_torch_free(run, planted, digits_npz, tmp_path):
    """onnxruntime's quantize_static QDQ file keeps the fp32 names: matched by name, and
    its per-tensor activations crush the same channels."""
    out = tmp_path / "ort.json"
    result = run("inspect", "--reference", planted["fp32.onnx"], "--candidate",
                 planted["qdq_ort.onnx"], "--data", f"npz:{digits_npz}", "--images", "16",
                 "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["names_agree"] == 1.0 and report["runtimes"] == ["onnxruntime"]
    assert {"relu", "relu_1", "relu_2", "relu_3", "logits"} <= {
        e["reference_tensor"] for e in report["layers"]}
    assert_planted_found(report)


def test_inspect_matches_by_position_when_names_differ(planted, tmp_path):
    """Another converter's names: every tensor of the int8 TFLite renamed; matched in graph
    order by kind and shape, with the same verdict."""
    from edgecnn.verify.tflite_graph import _pack, _parse

    model = _parse(planted["int8.tflite"])
    for i, tensor in enumerate(model.subgraphs[0].tensors):
        tensor.name = f"t{i}"
    renamed = tmp_path / "renamed.tflite"
    renamed.write_bytes(_pack(model))  # keeps the embedded metadata
    report = run_inspect(planted["fp32.onnx"], renamed, "digits", images=8)
    assert report["names_agree"] == 0.0
    assert [e["reference_tensor"] for e in report["layers"]][-1] == "logits"
    assert_planted_found(report)


def _unrelated_onnx(path):
    """A 32x32 fp32 model with nothing in common with the planted one but its input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.config import ArtifactMetadata, Preprocessing

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1)],
        "unrelated", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                    ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])],
        [numpy_helper.from_array(np.ones((7, 1), np.float32), "W"),
         numpy_helper.from_array(np.zeros(7, np.float32), "B")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    record = Preprocessing((32, 32), 1, (0.5,), (0.5,), tuple("abcdefg"), layout="NCHW")
    helper.set_model_props(proto, {"edgecnn": ArtifactMetadata(record).to_json()})
    onnx.save(proto, str(path))
    return path


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_inspect_cli_errors_are_one_line(run, planted, tiny_artifacts, tmp_path):
    common = ("--data", "digits", "--json", tmp_path / "never.json")
    assert_one_line_error(run("inspect", "--reference", tmp_path / "missing.onnx",
                              "--candidate", planted["int8.onnx"], *common),
                          "missing.onnx", "file not found", "--reference")
    assert_one_line_error(run("inspect", "--reference", planted["fp32.onnx"],
                              "--candidate", planted["fp32.tflite"], *common),
                          "model_fp32.tflite", "no quantized activations")
    # a reference of another model (8x8 input) cannot take the candidate's images
    assert_one_line_error(run("inspect", "--reference", tiny_artifacts["fp32.onnx"],
                              "--candidate", planted["int8.onnx"], *common),
                          "fp32.onnx", "cannot run")
    unrelated = _unrelated_onnx(tmp_path / "unrelated.onnx")
    assert_one_line_error(run("inspect", "--reference", unrelated,
                              "--candidate", planted["int8.onnx"], *common),
                          "model_int8.onnx", "no quantized tensor has a float counterpart")
    assert_one_line_error(run("inspect", "--reference", planted["fp32.onnx"],
                              "--candidate", planted["int8.onnx"], "--images", "0", *common),
                          "--images")
    assert not (tmp_path / "never.json").exists()


def test_inspect_library_error_names_the_flag(planted, tmp_path):
    with pytest.raises(EdgecnnError, match="--candidate must be .onnx or .tflite"):
        run_inspect(planted["fp32.onnx"], planted["checkpoint"] / "config.json", "digits")


def test_export_report_gets_the_worst_layers_and_the_plot(planted, tmp_path):
    """What `export --int8` adds to report.md: the five worst layers of the int8 .tflite
    on XNNPACK, inspect.json and the SQNR plot beside the report."""
    from edgecnn.report import Report
    from edgecnn.verify.inspect import inspect_for_report

    candidates = [planted["int8.onnx"], planted["fp32.tflite"], planted["int8.tflite"]]
    summary = inspect_for_report(planted["fp32.onnx"], candidates, "digits", tmp_path,
                                 images=8)
    assert summary["candidate"] == "model_int8.tflite" and summary["runtime"] == "xnnpack"
    assert [w["layer"] for w in summary["worst"]][:2] == ["block.proj", "block.conv"]
    assert len(summary["worst"]) == 5
    assert (tmp_path / "sqnr_along_depth.png").is_file()
    assert len(json.loads((tmp_path / "inspect.json").read_text())["layers"]) == 7
    markdown = Report({"model": "planted", "data": "digits", "method": "ptq",
                       "reference_accuracy": 0.5, "val_images": 8, "max_drop": 1.0,
                       "inspect": summary}).to_markdown()
    section = markdown.split("## Where the int8 error comes from")[1]
    assert "| relu_2 | block.proj | CONV_2D |" in section
    assert "![SQNR along depth](sqnr_along_depth.png)" in section
    # an artifact inspect cannot read is said in the report, not a failed export
    broken = tmp_path / "model_int8_broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    summary = inspect_for_report(planted["fp32.onnx"], [broken], "digits", tmp_path)
    assert summary["error"] == (f"{broken}: not a TFLite model (no 'TFL3' identifier; 16 "
                                "bytes); is the file truncated or of another format?")


def test_error_stats_by_hand():
    """The figures on numbers small enough to check by hand, over two batches."""
    from edgecnn.verify.metrics import ErrorStats

    stats = ErrorStats(scale=0.1)
    ref = np.array([[1.0, -2.0], [3.0, 0.5]])
    raw = np.array([[11, -21], [32, 5]], np.int8)  # zero point 0: dequantized = raw / 10
    stats.add(ref[:1], raw[:1] * 0.1, raw[:1], (-128, 127), 0, channel_axis=1)
    stats.add(ref[1:], raw[1:] * 0.1, raw[1:], (-128, 127), 0, channel_axis=1)
    figures = stats.summary()
    assert figures["sqnr_db"] == pytest.approx(10 * np.log10(14.25 / 0.06))
    assert figures["max_err_steps"] == pytest.approx(2.0)
    assert figures["mean_err_steps"] == pytest.approx(1.0)
    cosine = (ref * raw * 0.1).sum() / np.sqrt((ref ** 2).sum() * ((raw * 0.1) ** 2).sum())
    assert figures["cosine"] == pytest.approx(cosine)
    channels = [10 * np.log10(10.0 / 0.05), 10 * np.log10(4.25 / 0.01)]
    assert figures["channel_sqnr_db"] == pytest.approx(np.median(channels))
    assert figures["saturated"] == 0.0 and figures["clipped"] == 0.0
    # saturation counts the limits but not a limit that is the zero point (a ReLU's zeros)
    relu = ErrorStats(scale=1.0)
    relu.add(np.array([-128.0, 200.0, 5.0, 0.0]) + 128, np.array([0.0, 255.0, 133.0, 128.0]),
             np.array([-128, 127, 5, 0]), (-128, 127), -128)
    assert relu.saturated == 1 and relu.clipped == 1
