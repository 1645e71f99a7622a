"""The typed results of bench, validate and `export --int8` (issue 17, item 4).

Their `to_dict()` is the public JSON (`edgecnn bench --json`, `edgecnn validate --json`,
report.json's "artifacts"): the key lists below are those files' keys, in order, as
main wrote them before the results were typed. A file's precision and format come from
the file itself (its embedded record, its suffix), never from its name.
"""

from __future__ import annotations

import json
import shutil

import pytest

from edgecnn.report import ArtifactReport, artifact_reports
from edgecnn.runtime.bench import BenchConfig, BenchReport, run_bench
from edgecnn.runtime.validate import Bounds, ValidationReport, run_validate

BENCH_ROW_KEYS = [
    "artifact", "name", "backend", "input", "precision", "model", "has_metadata",
    "baseline_rss_mb", "threads", "batch", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
    "min_ms", "max_ms", "std_ms", "throughput_ips", "size_bytes", "peak_rss_mb",
    "speedup_vs_first", "size_vs_first"]
VALIDATE_KEYS = [
    "data", "num_images", "num_classes", "chance", "bounds", "confidence",
    "min_class_images", "reference", "reference_accuracy", "reference_top5", "candidates",
    "passed"]
REFERENCE_KEYS = ["artifact", "name", "backend", "precision", "accuracy", "top5"]
CANDIDATE_KEYS = [
    *REFERENCE_KEYS, "drop", "drop_ci", "agreement", "agreement_ci", "discordant",
    "top5_drop", "worst_classes", "decided", "notes", "failures", "passed"]
ARTIFACT_KEYS = [
    "name", "path", "format", "precision", "size_bytes", "accuracy", "drop", "agreement",
    "latency_ms_p50", "speedup_vs_fp32", "passed", "drop_ci", "agreement_ci"]


@pytest.fixture(scope="module")
def misnamed(tiny_artifacts, tmp_path_factory):
    """The tiny artifacts under names that lie: the int8 .tflite is called
    model_fp32.tflite, the fp32 .tflite and the fp32 ONNX carry "int8" in their names."""
    out = tmp_path_factory.mktemp("misnamed")
    names = {"fp32.onnx": "reference_int8.onnx", "int8.tflite": "model_fp32.tflite",
             "fp32.tflite": "weird_int8.tflite"}
    return {src: shutil.copy(tiny_artifacts[src], out / dst) for src, dst in names.items()}


@pytest.fixture(scope="module")
def measured(misnamed, digits_npz):
    files = [misnamed["fp32.onnx"], misnamed["int8.tflite"], misnamed["fp32.tflite"]]
    validation = run_validate(files[0], files[1:], f"npz:{digits_npz}",
                              Bounds(max_drop=5.0, min_agreement=0.9))
    bench = run_bench(files, BenchConfig(threads=(1, 2), runs=5, warmup=1, rounds=1),
                      progress=False)
    return validation, bench


def test_to_dict_keeps_the_json_keys_and_round_trips(measured):
    validation, bench = measured
    data = bench.to_dict()
    assert list(data) == ["machine", "settings", "results"]
    assert [list(r) for r in data["results"]] == [BENCH_ROW_KEYS] * 6
    data = validation.to_dict()
    assert list(data) == VALIDATE_KEYS
    assert list(data["reference"]) == REFERENCE_KEYS
    assert [list(c) for c in data["candidates"]] == [CANDIDATE_KEYS] * 2
    assert list(data["bounds"]) == ["max_drop", "min_agreement", "gate"]
    assert data["reference_accuracy"] == validation.reference.accuracy
    # what a device sends back (`bench --remote`) reads into the same objects, byte for byte
    for report, kind in ((bench, BenchReport), (validation, ValidationReport)):
        text = json.dumps(report.to_dict(), indent=2)
        again = kind.from_dict(json.loads(text))
        assert again == report and json.dumps(again.to_dict(), indent=2) == text


def test_precision_and_fp32_reference_come_from_the_files_not_their_names(measured):
    validation, bench = measured
    assert [(r.name, r.format, r.precision) for r in bench.results[:3]] == [
        ("reference_int8.onnx", "onnx", "fp32"), ("model_fp32.tflite", "tflite", "int8"),
        ("weird_int8.tflite", "tflite", "fp32")]
    assert [c.precision for c in validation.candidates] == ["int8", "fp32"]
    onnx, int8, fp32 = artifact_reports(validation, bench)
    assert (int8.name, int8.format, int8.precision) == ("model_fp32.tflite", "tflite", "int8")
    assert (fp32.precision, onnx.precision) == ("fp32", "fp32")
    # the int8 .tflite's speed-up is against the fp32 .tflite, whatever the files are called
    int8_row, fp32_row = bench.find(int8.path, 1), bench.find(fp32.path, 1)
    assert int8.speedup_vs_fp32 == fp32_row.p50_ms / int8_row.p50_ms
    assert fp32.speedup_vs_fp32 == 1.0 and onnx.speedup_vs_fp32 == 1.0
    assert int8.latency_ms_p50 == {1: int8_row.p50_ms, 2: bench.find(int8.path, 2).p50_ms}
    assert int8.drop == validation.candidates[0].drop and onnx.drop == 0.0
    assert int8.passed == validation.candidates[0].passed and onnx.drop_ci is None
    entry = int8.to_dict()
    assert list(entry) == ARTIFACT_KEYS and list(entry["latency_ms_p50"]) == ["1", "2"]
    assert list(onnx.to_dict()) == ARTIFACT_KEYS[:-2]  # no intervals for the reference
    assert ArtifactReport.from_dict(json.loads(json.dumps(entry))) == int8
