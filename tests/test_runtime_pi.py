"""The device side on a Raspberry Pi OS bookworm mirror: Python 3.11, numpy 1.24,
tflite-runtime 2.14 and the base edgecnn package; no torch, LiteRT or scikit-learn."""

import json

import pytest
from pi_env import pi_python_or_skip, run_pi, run_pi_edgecnn


@pytest.fixture(scope="module")
def pi():
    return pi_python_or_skip()


#: the tests that run in the venv; test_cache_keys_... below needs none
needs_venv = pytest.mark.pi_venv


@needs_venv
def test_the_environment_is_what_a_pi_has(pi):
    code = ("import importlib.util as u, sys, numpy, tflite_runtime;"
            "print(sys.version_info[:2], numpy.__version__, tflite_runtime.__version__,"
            " [m for m in ('torch', 'ai_edge_litert', 'sklearn') if u.find_spec(m)])")
    result = run_pi(["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 11) 1.24.4 2.14.0 []"


@needs_venv
def test_bench_and_validate_run_on_tflite_runtime(pi, tiny_artifacts, digits_npz, tmp_path):
    bench = run_pi_edgecnn(["bench", str(tiny_artifacts["int8.tflite"]),
                            str(tiny_artifacts["fp32.onnx"]), "--threads", "1,2", "--runs", "20",
                            "--warmup", "2", "--json", str(tmp_path / "bench.json")])
    assert bench.returncode == 0, bench.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["backend"] for r in report["results"]] == ["tflite_runtime", "onnxruntime"] * 2
    assert report["machine"]["packages"]["numpy"] == "1.24.4"
    assert "tflite-runtime" in report["machine"]["packages"]
    assert "torch" not in report["machine"]["packages"]
    assert all(r["runs"] == 20 and r["peak_rss_mb"] > 0 for r in report["results"])

    validate = run_pi_edgecnn(["validate", "--reference", str(tiny_artifacts["fp32.onnx"]),
                               "--candidate", str(tiny_artifacts["int8.tflite"]),
                               "--candidate", str(tiny_artifacts["fp32.tflite"]),
                               "--data", f"npz:{digits_npz}", "--min-agreement", "0.97",
                               "--json", str(tmp_path / "validate.json")])
    assert validate.returncode == 0, validate.stderr
    result = json.loads((tmp_path / "validate.json").read_text())
    assert 0.85 < result["reference_accuracy"] < 0.95
    int8, fp32 = result["candidates"]
    assert int8["backend"] == "tflite_runtime" and int8["passed"] and int8["agreement"] >= 0.97
    assert fp32["drop"] == 0.0 and fp32["agreement"] == 1.0


@needs_venv
def test_metadata_reader_needs_no_flatbuffers_package(pi, tiny_artifacts):
    # onnxruntime pulls in flatbuffers, a Pi image may not have it: block it here
    code = ("import sys; sys.modules['flatbuffers'] = None;"
            "from edgecnn.runtime import open_session;"
            f"s = open_session({str(tiny_artifacts['int8.tflite'])!r});"
            "print(s.backend, s.metadata.precision, s.record.layout, s.input.quant.zero_point)")
    result = run_pi(["-c", code])
    assert result.returncode == 0, result.stderr
    backend, precision, layout, _ = result.stdout.split()
    assert (backend, precision, layout) == ("tflite_runtime", "int8", "NHWC")


@needs_venv
def test_truncated_tflite_is_one_line_on_tflite_runtime(pi, tiny_artifacts, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(tiny_artifacts["fp32.tflite"].read_bytes()[:-200])
    result = run_pi_edgecnn(["bench", str(broken), "--runs", "2"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.tflite: corrupt or truncated TFLite model" in lines[0]


def test_cache_keys_follow_dependencies_and_sources(tmp_path, monkeypatch):
    import pi_env

    root = tmp_path / "repo"
    (root / "edgecnn").mkdir(parents=True)
    (root / "pyproject.toml").write_text('dependencies = ["numpy"]\n')
    (root / "edgecnn" / "a.py").write_text("x = 1\n")
    deps, source = pi_env.deps_key(root), pi_env.source_key(root)
    (root / "edgecnn" / "a.py").write_text("x = 2\n")
    assert pi_env.deps_key(root) == deps and pi_env.source_key(root) != source
    (root / "pyproject.toml").write_text('dependencies = ["numpy", "rich"]\n')
    assert pi_env.deps_key(root) != deps
    monkeypatch.setenv("EDGECNN_TEST_CACHE", str(tmp_path / "cache"))
    assert pi_env.venv_dir(root).parent == tmp_path / "cache"
    assert pi_env.venv_dir(root).name.startswith("pi-bookworm-py311-")
