"""`edgecnn bench` and `edgecnn validate` as a user runs them, with torch unimportable."""

import json
import subprocess
import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def run(edgecnn_cmd, blocked_imports_env, tmp_path_factory):
    env = blocked_imports_env("torch", "torchao", "torchvision")
    cwd = tmp_path_factory.mktemp("cli")

    def run(*args, extra_env=None):
        return subprocess.run([*edgecnn_cmd, *map(str, args)], capture_output=True, text=True,
                              env={**env, **(extra_env or {})}, cwd=cwd, timeout=300)

    return run


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_runtime_imports_no_torch(blocked_imports_env):
    code = ("import sys; import edgecnn.runtime, edgecnn.runtime.bench, edgecnn.runtime.validate,"
            " edgecnn.runtime.backends.onnx, edgecnn.runtime.backends.tflite, edgecnn.cli, "
            "edgecnn.data;"
            "from edgecnn.runtime import installed_backends;"
            "assert not any(m.split('.')[0] == 'torch' for m in sys.modules), 'torch imported';"
            "print(','.join(installed_backends()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=blocked_imports_env("torch"), timeout=120)
    assert result.returncode == 0, result.stderr
    backends = result.stdout.strip().split(",")
    assert "onnxruntime" in backends and "torch" not in backends
    blocked = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True,
                             env=blocked_imports_env("torch"), timeout=60)
    assert blocked.returncode != 0  # the blocker really blocks


def test_bench_writes_table_and_json(run, tiny_artifacts, tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", tiny_artifacts["fp32.onnx"], tiny_artifacts["int8.tflite"],
                 "--threads", "1,2", "--runs", "20", "--warmup", "2", "--json", out)
    assert result.returncode == 0, result.stderr
    for text in ("fp32.onnx", "int8.tflite", "p50 ms", "peak RSS MB", "speedup", "1.00×"):
        assert text in result.stdout
    report = json.loads(out.read_text())
    assert len(report["results"]) == 4 and {r["threads"] for r in report["results"]} == {1, 2}
    assert all(r["runs"] == 20 and r["p50_ms"] > 0 for r in report["results"])
    assert set(report["machine"]) >= {"cpu", "cores", "os", "python", "packages"}


def test_validate_passes_and_writes_reports(run, tiny_artifacts, digits_npz, tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# CI\n")
    result = run("validate", "--reference", tiny_artifacts["fp32.onnx"],
                 "--candidate", tiny_artifacts["int8.tflite"],
                 "--candidate", tiny_artifacts["fp32_dyn.tflite"],
                 "--data", f"npz:{digits_npz}", "--min-agreement", "0.97",
                 "--json", tmp_path / "v.json", "--markdown", tmp_path / "v.md",
                 extra_env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 0, result.stderr
    assert "fp32.onnx (reference)" in result.stdout and "int8.tflite" in result.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert 0.85 < report["reference_accuracy"] < 0.95
    for candidate in report["candidates"]:
        assert {"accuracy", "drop", "agreement", "passed"} <= set(candidate)
        assert candidate["passed"] is True
    markdown = (tmp_path / "v.md").read_text()
    assert markdown.startswith("### edgecnn validate: npz:")
    assert summary.read_text() == "# CI\n" + markdown + "\n"


def test_validate_exit_1_names_candidate_bound_and_margin(run, tiny_artifacts, digits_npz):
    result = run("validate", "--reference", tiny_artifacts["fp32.onnx"],
                 "--candidate", tiny_artifacts["worse.onnx"], "--data", f"npz:{digits_npz}",
                 "--max-drop", "0.5", "--min-agreement", "0.5")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAIL worse.onnx: top-1 drop ")
    assert "exceeds --max-drop 0.50 pp by " in lines[0]


def test_validate_on_embedded_digits(run, tiny_artifacts):
    result = run("validate", "--reference", tiny_artifacts["fp32.onnx"],
                 "--candidate", tiny_artifacts["fp32.tflite"], "--data", "digits")
    assert result.returncode == 0, result.stderr
    assert "88.30%" in result.stdout and "359 images" in result.stdout


def test_bad_input_is_one_line_and_exit_2(run, tiny_artifacts, digits_npz, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(tiny_artifacts["int8.tflite"].read_bytes()[:-300])
    assert_one_line_error(run("bench", broken, "--runs", "2"),
                          "broken.tflite: corrupt or truncated TFLite model")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage")
    assert_one_line_error(run("validate", "--reference", garbage, "--candidate",
                              tiny_artifacts["fp32.tflite"], "--data", f"npz:{digits_npz}"),
                          "garbage.onnx: not a loadable ONNX model")
    assert_one_line_error(run("bench", tiny_artifacts["fp32.onnx"], "--backend", "tvm"),
                          "unknown backend 'tvm'; installed: onnxruntime, ai_edge_litert")
    assert_one_line_error(run("bench", tiny_artifacts["fp32.onnx"], "--runs", "5",
                              "--seconds", "1"), "either --runs or --seconds")
    five = tmp_path / "five.npz"
    np.savez(five, x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 5)
    assert_one_line_error(run("validate", "--reference", tiny_artifacts["fp32.onnx"],
                              "--candidate", tiny_artifacts["fp32.tflite"], "--data",
                              f"npz:{five}"), "has 5 classes but", "outputs 10 logits")
    usage = run("validate", "--reference", tiny_artifacts["fp32.onnx"], "--data", "digits")
    assert usage.returncode == 2 and "--candidate" in usage.stderr
