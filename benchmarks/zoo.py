"""Regenerate benchmarks/RESULTS.md: the zoo x precision x runtime table.

For each zoo model:
- params and MACs at 224x224, 1000 classes;
- accuracy on digits (small-input mode, 32 px): fp32, int8 PTQ and int8 QAT through
  edgecnn's quantizer, measured on the exported int8 ONNX, with the drop in points;
  and onnxruntime.quantization.quantize_static (QDQ, per channel, U8S8 reduce_range,
  the same calibration images) on the same fp32 ONNX, for comparison;
- p50 latency, batch 1, at 224x224 (1000 classes, PTQ on random images: latency does
  not depend on the weights' values) for fp32 and int8 on onnxruntime and LiteRT at
  1 and 2 threads, measured interleaved by `edgecnn bench`'s engine.

    python benchmarks/zoo.py [--models dsc_net,mobilenet_v2] [--cache DIR] [--runs 100]

Trained checkpoints and artifacts are cached in --cache (default ~/.cache/edgecnn-zoo),
so a re-run only redoes what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from edgecnn import pipeline, quant
from edgecnn.config import ArtifactMetadata, Preprocessing
from edgecnn.data import load
from edgecnn.export import onnx as onnx_export
from edgecnn.export.tflite import convert
from edgecnn.models import create_model, models
from edgecnn.models.stats import model_stats
from edgecnn.runtime.bench import BenchConfig, run_bench
from edgecnn.runtime.machine import describe_machine
from edgecnn.runtime.validate import Bounds, run_validate
from edgecnn.train import TrainConfig, to_tensors

SCHEDULES = {"dsc_net": TrainConfig(epochs=10, lr=5e-3)}
DEFAULT_SCHEDULE = TrainConfig(epochs=6, lr=2e-3)
CALIB_IMAGES = 512


def accuracy_row(name: str, cache: Path) -> dict:
    """fp32 / PTQ / QAT on digits through `edgecnn export --int8`, and quantize_static."""
    checkpoint = cache / name / "checkpoint"
    if not (checkpoint / "checkpoint.pt").is_file():
        pipeline.train_reference(name, "digits", checkpoint, SCHEDULES.get(name, DEFAULT_SCHEDULE),
                                 show_progress=False)
    row = {}
    for method in ("ptq", "qat"):
        report = pipeline.export_int8(name, checkpoint=checkpoint, method=method,
                                      formats=("onnx",), out=cache / name / method,
                                      show_progress=False, bench_runs=20)
        row["fp32"] = report.data["reference_accuracy"]
        row[method] = report.artifact("model_int8.onnx")["accuracy"]
    fp32_onnx = cache / name / "ptq" / "model_fp32.onnx"
    static = quantize_static_u8s8(fp32_onnx, checkpoint, cache / name / "quantize_static.onnx")
    result = run_validate(fp32_onnx, [static], "digits", Bounds(min_agreement=0.0))
    row["quantize_static"] = result["candidates"][0]["accuracy"]
    return row


def quantize_static_u8s8(fp32: Path, checkpoint: Path, out: Path) -> Path:
    """onnxruntime's best x86 recipe, calibrated on the same training images as PTQ."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgecnn.checkpoint import read_config

    config = read_config(checkpoint)
    data = load("digits")
    x, _ = to_tensors(data.train_images[:CALIB_IMAGES], data.train_labels[:CALIB_IMAGES],
                      config.preprocessing)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": x[i:i + 32].numpy()} for i in range(0, len(x), 32)])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_name("fp32_pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=True)
    proto = onnx.load(str(out))
    onnx_export.attach_metadata(proto, ArtifactMetadata(config.preprocessing, model="static",
                                                        precision="int8"))
    onnx.save(proto, str(out))
    return out


def latency_row(name: str, cache: Path, runs: int) -> dict:
    """p50 ms at 224 px: fp32 / int8 x onnxruntime / LiteRT x 1 / 2 threads."""
    directory = cache / name / "latency224"
    directory.mkdir(parents=True, exist_ok=True)
    record = Preprocessing((224, 224), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           tuple(str(i) for i in range(1000)))
    files = {k: directory / k for k in ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite")}
    if not all(p.is_file() for p in files.values()):
        torch.manual_seed(0)
        model = create_model(name).eval()
        calib = torch.randn(16, 3, 224, 224)
        converted = quant.quantize(model, calib[:2], "ptq", train_data=calib, calib_batches=2,
                                   batch_size=8)
        onnx_export.export_fp32(model, record, files["fp32.onnx"])
        onnx_export.export_int8(converted, record, files["int8.onnx"])
        convert(files["fp32.onnx"], files["fp32.tflite"])
        convert(files["int8.onnx"], files["int8.tflite"])
    report = run_bench(list(files.values()), BenchConfig(threads=(1, 2), runs=runs),
                       progress=False)
    return {f"{r['name']}@{r['threads']}": r["p50_ms"] for r in report["results"]}


def render(rows: dict[str, dict], machine: dict, args: argparse.Namespace) -> str:
    lines = [
        "# edgecnn zoo results", "",
        f"Generated by `python benchmarks/zoo.py` on {time.strftime('%Y-%m-%d')}: "
        f"{machine['cpu']}, {machine['usable_cores']} cores, {machine['os']}, Python "
        f"{machine['python']}, " + ", ".join(f"{k} {v}" for k, v in machine["packages"].items()),
        "", "## Accuracy on digits (359 validation images, small-input mode, 32 px)", "",
        "int8 accuracies are of the exported int8 ONNX on onnxruntime. quantize_static: "
        "onnxruntime.quantization, QDQ, per channel, U8S8 with reduce_range (its fast x86 "
        f"recipe), calibrated on the same {CALIB_IMAGES} training images.", "",
        "| model | params (224) | MACs (224) | fp32 | PTQ | PTQ drop | QAT | QAT drop | "
        "quantize_static | its drop |", "|" + " --- |" * 10]
    for name, r in rows.items():
        a = r["accuracy"]
        pct = {k: 100 * v for k, v in a.items()}
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:.0f}M | {pct['fp32']:.2f} | "
            f"{pct['ptq']:.2f} | {pct['fp32'] - pct['ptq']:+.2f} | {pct['qat']:.2f} | "
            f"{pct['fp32'] - pct['qat']:+.2f} | {pct['quantize_static']:.2f} | "
            f"{pct['fp32'] - pct['quantize_static']:+.2f} |")
    lines += ["", "## p50 latency, ms, batch 1, 224x224, 1000 classes", "",
              f"`edgecnn bench` engine: one process per artifact, {args.runs} runs in "
              "interleaved rounds. int8 ONNX has uint8 activations (onnxruntime's x86 fast "
              "path); int8 TFLite is full int8 on LiteRT with XNNPACK.", "",
              "| model | ORT fp32 1t | ORT int8 1t | x | ORT fp32 2t | ORT int8 2t | x | "
              "LiteRT fp32 1t | LiteRT int8 1t | x | LiteRT fp32 2t | LiteRT int8 2t | x |",
              "|" + " --- |" * 13]
    for name, r in rows.items():
        lat = r["latency"]
        cells = []
        for fmt in ("onnx", "tflite"):
            for t in (1, 2):
                f, i = lat[f"fp32.{fmt}@{t}"], lat[f"int8.{fmt}@{t}"]
                cells += [f"{f:.2f}", f"{i:.2f}", f"{f / i:.2f}x"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate benchmarks/RESULTS.md")
    parser.add_argument("--models", default=",".join(models))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgecnn-zoo")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    rows = {}
    results_json = args.cache / "results.json"
    if results_json.is_file():
        rows = json.loads(results_json.read_text())
    for name in args.models.split(","):
        start = time.perf_counter()
        stats = model_stats(name)
        rows[name] = {"params": stats["params"], "macs": stats["macs"],
                      "accuracy": accuracy_row(name, args.cache),
                      "latency": latency_row(name, args.cache, args.runs)}
        args.cache.mkdir(parents=True, exist_ok=True)
        results_json.write_text(json.dumps(rows, indent=2))
        print(f"{name}: {time.perf_counter() - start:.0f}s {rows[name]}", flush=True)
    text = render({n: rows[n] for n in models if n in rows}, describe_machine(), args)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    np.seterr(all="ignore")
    main()
