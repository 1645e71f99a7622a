"""`edgecnn bench --profile` on dsc_net's real fp32 and int8 files, on onnxruntime and LiteRT."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnx
import pytest

from edgecnn.errors import EdgecnnError
from edgecnn.runtime import profile


@pytest.fixture(scope="module")
def dsc_files(dsc_reference, tmp_path_factory) -> dict[str, Path]:
    from edgecnn.export.tflite import convert

    paths = dsc_reference[5]
    out = tmp_path_factory.mktemp("profile")
    files = {"fp32.onnx": Path(paths["fp32"]), "int8.onnx": Path(paths["uint8"])}
    files["fp32.tflite"] = convert(paths["fp32"], out / "fp32.tflite")
    files["int8.tflite"] = convert(paths["int8"], out / "int8.tflite")
    return files


def _compute_layers(path: Path) -> list[str]:
    """dw / pw / conv / fc of each Conv and Gemm node of the ONNX graph, in order."""
    graph = onnx.load(str(path)).graph
    kinds = []
    for node in graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"),
                          None)
            kinds.append("dw" if group > 1 else "pw" if kernel == [1, 1] else "conv")
        elif node.op_type in ("Gemm", "MatMul"):
            kinds.append("fc")
    return kinds


def test_every_op_in_a_layer_and_layers_match_the_graph(dsc_files):
    expected = _compute_layers(dsc_files["fp32.onnx"])
    assert expected.count("dw") >= 5 and expected.count("pw") >= 5  # dsc_net: dw + pw blocks
    profiles = {name: profile.profile_file(path, runs=10, warmup=2)
                for name, path in dsc_files.items()}
    for name, prof in profiles.items():
        ops = prof["ops"]
        assert ops and all(o["us"] > 0 and o["layer"] for o in ops), name
        assert prof["total_us"] == pytest.approx(sum(o["us"] for o in ops))
        kinds = [o["kind"] for o in ops if o["kind"]]
        assert kinds == expected, (name, kinds)
        shares = profile.by_kind(prof)
        assert sum(shares.values()) == pytest.approx(1.0) and {"dw", "pw"} <= set(shares)
    assert profiles["fp32.onnx"]["method"] == "onnxruntime profiler"
    assert profiles["int8.tflite"]["method"] == "LiteRT, each op alone"
    # the int8 ONNX kernels are fused QLinearConv (one op per conv), the fp32 ones Conv
    assert {o["op"] for o in profiles["int8.onnx"]["ops"] if o["kind"]} >= {"QLinearConv"}
    rows = profile.compare_layers(profiles["fp32.tflite"], profiles["int8.tflite"])
    assert len(rows) == len(expected) and all(r["matched"] and r["speedup"] > 0 for r in rows)


def test_cli_profile_tables_json_and_plot(dsc_files, edgecnn_cmd, blocked_imports_env,
                                          tmp_path):
    files = [dsc_files[k] for k in ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite")]
    result = subprocess.run([*edgecnn_cmd, "bench", *map(str, files), "--profile", "--runs",
                             "5", "--warmup", "1", "--top", "4", "--json",
                             str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png")],
                            capture_output=True, text=True, timeout=300,
                            env={**blocked_imports_env("torch"), "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for text in ("top ops", "by layer kind: ", "speed-up", "fp32.onnx vs int8_uint8.onnx",
                 "fp32.tflite vs int8.tflite"):
        assert text in result.stdout, text
    report = json.loads((tmp_path / "p.json").read_text())
    assert [p["name"] for p in report["profiles"]] == [f.name for f in files]
    assert [(c["base"], c["other"]) for c in report["comparisons"]] == [
        (files[0].name, files[1].name), (files[2].name, files[3].name)]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_profile_errors_are_one_line(tmp_path):
    bad = tmp_path / "m.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(EdgecnnError, match=r"m\.tflite: corrupt or truncated TFLite model"):
        profile.profile_file(bad)
    with pytest.raises(EdgecnnError, match=r"reads \.onnx and \.tflite files"):
        (tmp_path / "m.pt2").write_bytes(b"x")
        profile.profile_file(tmp_path / "m.pt2")
