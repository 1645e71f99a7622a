"""Benchmark: statistics, interleaved worker processes, per-artifact peak RSS, machine info."""

import pytest

from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.runtime.bench import BenchConfig, LatencyStats, parse_threads, run_bench
from edgecnn.runtime.bench_worker import time_runs
from edgecnn.runtime.machine import describe_machine


def test_latency_stats_from_nanoseconds():
    stats = LatencyStats.from_ns([i * 1_000_000 for i in range(1, 101)])  # 1..100 ms
    assert stats.runs == 100 and stats.min_ms == 1.0 and stats.max_ms == 100.0
    assert stats.p50_ms == pytest.approx(50.5) and stats.mean_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1) and stats.p99_ms == pytest.approx(99.01)


def test_config_validation_and_interleaved_chunks():
    assert BenchConfig().runs == 200
    assert [c["runs"] for c in BenchConfig(runs=23, rounds=5).chunks()] == [5, 5, 5, 4, 4]
    assert [c["runs"] for c in BenchConfig(runs=3).chunks()] == [1, 1, 1]
    assert BenchConfig(seconds=2.0, rounds=4).chunks() == [{"seconds": 0.5}] * 4
    assert parse_threads("1,2,4") == (1, 2, 4) and parse_threads("auto") == (None,)
    with pytest.raises(EdgecnnError, match="pass either runs or seconds, not both"):
        BenchConfig(runs=5, seconds=1.0)
    # the library names the parameter, the CLI the flag (ParameterError.for_cli)
    for bad, message in [(dict(batch=0), "batch must be an integer in [1, 65536], got 0"),
                         (dict(runs=0), "runs must be an integer in [1, 10000000], got 0"),
                         (dict(runs="3"), "runs must be an integer in [1, 10000000], got '3'"),
                         (dict(threads=(2, 0)), "threads must be an integer in [1, 1024], got 0"),
                         (dict(seconds=-1.0), "seconds must be a finite number in (0, 86400]")]:
        with pytest.raises(ParameterError) as caught:
            BenchConfig(**bad)
        assert str(caught.value).startswith(message) and \
            caught.value.for_cli().startswith(f"--{message}")
    with pytest.raises(ParameterError, match="^threads expects comma-separated integers"):
        parse_threads("1,two")


def test_time_runs_counts_and_time_budget():
    calls = []
    assert len(time_runs(lambda: calls.append(1), runs=7, rewarm=2)) == 7 and len(calls) == 9
    timings = time_runs(lambda: sum(range(1000)), seconds=0.05)
    assert len(timings) > 10 and sum(timings) >= 0.04e9 and all(t > 0 for t in timings)


def test_bench_two_artifacts_two_thread_counts(tiny_artifacts):
    paths = [tiny_artifacts["fp32.onnx"], tiny_artifacts["int8.tflite"]]
    report = run_bench(paths, BenchConfig(threads=(1, 2), runs=30, warmup=3, rounds=3),
                       progress=False)
    results = report.results
    assert [(r.name, r.threads) for r in results] == [
        ("fp32.onnx", 1), ("int8.tflite", 1), ("fp32.onnx", 2), ("int8.tflite", 2)]
    for r, path in zip(results, paths * 2, strict=True):
        lat = r.latency
        assert lat.runs == 30 and r.batch == 1 and r.size_bytes == path.stat().st_size
        assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
        assert r.throughput_ips == pytest.approx(1000.0 / lat.mean_ms)
        assert 20 < r.baseline_rss_mb <= r.peak_rss_mb < 2000
        assert r.has_metadata and r.model == "ncm_digits"
    onnx, tflite = results[0], results[1]
    assert report.find(paths[1], 1) is tflite and report.find(paths[0], 2) is results[2]
    assert onnx.backend == "onnxruntime" and tflite.backend == "ai_edge_litert"
    assert onnx.precision == "fp32" and tflite.precision == "int8"
    assert (onnx.format, tflite.format) == ("onnx", "tflite")
    assert onnx.speedup_vs_first == 1.0 and onnx.size_vs_first == 1.0
    assert tflite.speedup_vs_first == pytest.approx(onnx.p50_ms / tflite.p50_ms)
    assert tflite.input == "(1, 8, 8, 1) int8 NHWC"
    # separate processes: each artifact's peak RSS is its own runtime's, not a shared one
    assert onnx.peak_rss_mb != tflite.peak_rss_mb
    machine = report.machine
    assert machine["cores"] >= 1 and machine["python"].count(".") == 2
    assert "onnxruntime" in machine["packages"] and machine["cpu"]
    assert report.settings["threads"] == [1, 2]


def test_bench_time_budget_batches_and_no_metadata(tiny_artifacts, tmp_path):
    from tiny_models import digits_classifier, write_onnx

    bare = write_onnx(digits_classifier(), tmp_path / "bare.onnx", metadata=False)
    paths = [bare, tiny_artifacts["fp32.tflite"]]  # the .tflite has a fixed batch of 1
    report = run_bench(paths, BenchConfig(batch=4, seconds=0.2, warmup=1, rounds=2),
                       progress=False)
    bare_row, fixed_row = report.results
    assert bare_row.has_metadata is False and bare_row.precision is None
    assert bare_row.input == "(N, 1, 8, 8) float32"
    for row in report.results:
        assert row.batch == 4 and row.latency.runs >= 2
        assert row.throughput_ips == pytest.approx(4000.0 / row.latency.mean_ms)


def test_bench_errors_name_the_file(tmp_path, tiny_artifacts):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(tiny_artifacts["fp32.tflite"].read_bytes()[:100])
    with pytest.raises(EdgecnnError, match=r"broken\.tflite: corrupt or truncated TFLite model"):
        run_bench([tiny_artifacts["fp32.onnx"], broken], BenchConfig(runs=2), progress=False)
    with pytest.raises(EdgecnnError, match=r"nothing\.onnx: file not found"):
        run_bench([tmp_path / "nothing.onnx"], BenchConfig(runs=2), progress=False)
    with pytest.raises(EdgecnnError, match=r"unknown backend 'nnapi'; installed: onnxruntime"):
        run_bench([tiny_artifacts["fp32.onnx"]], BenchConfig(runs=2, backend="nnapi"),
                  progress=False)


def test_machine_description_is_torch_free_and_complete():
    machine = describe_machine()
    assert set(machine) >= {"cpu", "arch", "cores", "usable_cores", "os", "python", "packages"}
    assert machine["packages"]["numpy"]
