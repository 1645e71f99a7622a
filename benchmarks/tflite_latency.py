"""mobilenet_v2 at 224 through edgecnn's TFLite exporter: conversion time, and float vs
int8 latency on LiteRT (XNNPACK), 1 and 2 threads.

    python benchmarks/tflite_latency.py [--rounds 7] [--runs 20] [--threads 1,2] [--json F]

The fp32 ONNX is edgecnn's export of the zoo's mobilenet_v2 (batch-norm statistics
randomized so activations look trained); the int8 QDQ model comes from
onnxruntime's quantize_static (per-channel, int8, MinMax on 8 random images).
Configurations are measured interleaved, round by round, so drift on a shared
machine hits all of them alike; each figure is the median over all runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build_models(directory: Path) -> dict[str, onnx.ModelProto]:
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from test_tflite_mobilenet import randomize_batchnorm

    from edgecnn.export.onnx import simplify, to_onnx
    from edgecnn.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v2").eval()
    randomize_batchnorm(model)
    fp32 = simplify(to_onnx(model, torch.randn(1, 3, 224, 224)))
    onnx.save(fp32, directory / "fp32.onnx")
    name = fp32.graph.input[0].name
    images = np.random.default_rng(0).standard_normal((8, 1, 3, 224, 224)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: x} for x in images])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(directory / "fp32.onnx", directory / "int8.onnx", Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"float": fp32, "int8": onnx.load(directory / "int8.onnx")}


def conversion_seconds(model: onnx.ModelProto, out: Path, repeats: int) -> float:
    from edgecnn.export.tflite import convert

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        convert(model, out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def latencies(files: dict[str, Path], threads: list[int], rounds: int, runs: int,
              warmup: int = 5) -> dict[str, dict]:
    from edgecnn.export.tflite.litert import delegate_coverage, interpreter

    sessions = {}
    for name, path in files.items():
        for n in threads:
            it = interpreter(path, threads=n)
            detail = it.get_input_details()[0]
            x = np.zeros(detail["shape"], detail["dtype"])
            it.set_tensor(detail["index"], x)
            for _ in range(warmup):
                it.invoke()
            sessions[(name, n)] = it
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, it in sessions.items():
            for _ in range(runs):
                start = time.perf_counter_ns()
                it.invoke()
                samples[key].append((time.perf_counter_ns() - start) / 1e6)
    results = {}
    for (name, n), values in samples.items():
        coverage = delegate_coverage(files[name], threads=n)
        results[f"{name}@{n}"] = {
            "model": name, "threads": n, "median_ms": statistics.median(values),
            "p90_ms": float(np.percentile(values, 90)), "runs": len(values),
            "delegated_ops": coverage.delegated, "total_ops": coverage.total}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        models = build_models(directory)
        files, convert_s = {}, {}
        for name, model in models.items():
            files[name] = directory / f"mobilenet_v2_{name}.tflite"
            convert_s[name] = conversion_seconds(model, files[name], repeats=5)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        results = latencies(files, threads, args.rounds, args.runs)

    from ai_edge_litert import __version__ as litert_version

    cpu = platform.processor() or platform.machine()
    print(f"mobilenet_v2 224x224 on LiteRT {litert_version}, {cpu}, {os.cpu_count()} cores")
    for name in models:
        print(f"  {name:5s}: ONNX -> TFLite {convert_s[name]:.3f} s (median of 5), "
              f"{sizes[name] / 1e6:.2f} MB")
    print(f"  {'model':5s} {'threads':>7s} {'median ms':>10s} {'p90 ms':>8s} {'XNNPACK':>9s}")
    for row in results.values():
        print(f"  {row['model']:5s} {row['threads']:7d} {row['median_ms']:10.2f} "
              f"{row['p90_ms']:8.2f} {row['delegated_ops']:>4d}/{row['total_ops']}")
    for n in threads:
        ratio = results[f"int8@{n}"]["median_ms"] / results[f"float@{n}"]["median_ms"]
        print(f"  int8 / float at {n} thread(s): {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"conversion_s": convert_s, "bytes": sizes,
                                         "latency": results}, indent=2))


if __name__ == "__main__":
    main()
