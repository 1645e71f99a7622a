"""`read_metadata` reads the record cheaply: ONNX metadata_props from the protobuf wire
format, a .pt2's extra file from its zip, with no onnxruntime session, no torch and no
onnx package (issue 17, item 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from edgecnn.errors import EdgecnnError
from edgecnn.runtime.onnx_meta import parse_onnx_metadata, read_onnx_metadata


def _props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def test_onnx_props_match_the_onnx_package(tiny_artifacts, tmp_path):
    model = onnx.load(str(tiny_artifacts["fp32.onnx"]))
    assert read_onnx_metadata(tiny_artifacts["fp32.onnx"]) == _props(model)
    assert "edgecnn" in _props(model)
    # more entries, unicode, an empty value, and fields after the graph
    model.metadata_props.add(key="ünï", value="κόσμε")
    model.metadata_props.add(key="empty", value="")
    model.doc_string = "written after metadata_props by some tools"
    path = tmp_path / "more.onnx"
    onnx.save(model, str(path))
    assert read_onnx_metadata(path) == _props(model)
    assert read_onnx_metadata(path)["ünï"] == "κόσμε"


def test_truncated_or_foreign_bytes_are_one_line(tiny_artifacts, tmp_path):
    data = tiny_artifacts["fp32.onnx"].read_bytes()
    for cut in (1, 7, len(data) // 2, len(data) - 3):
        with pytest.raises(EdgecnnError, match="corrupt or truncated ONNX model"):
            parse_onnx_metadata(data[:cut], "m.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(EdgecnnError, match="empty file"):
        read_onnx_metadata(empty)


def test_read_metadata_imports_no_runtime_and_no_torch(robust_base, blocked_imports_env):
    """The record of each artifact kind, read where onnxruntime, torch, onnx and LiteRT
    cannot be imported at all, equals what a full session reports."""
    from edgecnn.runtime import open_session

    paths = [robust_base / "model_fp32.onnx", robust_base / "model_int8.onnx",
             robust_base / "model_int8.tflite", robust_base / "model_int8.pt2"]
    expected = {}
    for path in paths:
        with open_session(path) as session:
            expected[str(path)] = session.metadata.to_json()
    code = ("import json, sys; from edgecnn.runtime import read_metadata; "
            "print(json.dumps({p: read_metadata(p).to_json() for p in sys.argv[1:]}))")
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
        timeout=300, env=blocked_imports_env("onnxruntime", "torch", "onnx", "ai_edge_litert",
                                             "tflite_runtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == expected
