"""onnxruntime latency: edgecnn int8 ONNX vs fp32 vs onnxruntime.quantization.quantize_static.

mobilenet_v2 at 224x224, 1000 classes, batch 1, 1 and 2 threads. edgecnn's
default (uint8 activations, image padded to 4 channels for the stem) against
int8 activations, against no channel padding, and against quantize_static. Measured
by `edgecnn bench`'s engine: a process per model, interleaved rounds, so load and
frequency changes hit them alike; medians are reported. Accuracy is not the point here (random
weights, PTQ on random calibration images); tests/ check parity.

    python benchmarks/onnx_latency.py [--runs 200] [--out benchmarks/onnx_latency.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from zoo import quantize_static_qdq  # benchmarks/ is the script's directory

from edgecnn import quant
from edgecnn.config import Preprocessing
from edgecnn.export import onnx as onnx_export
from edgecnn.models import create_model
from edgecnn.runtime.bench import BenchConfig, run_bench
from edgecnn.runtime.machine import describe_machine


def quantize_static_variants(fp32: Path, calib: np.ndarray, out: Path) -> dict[str, Path]:
    """onnxruntime's own QDQ quantizer: S8S8 and U8S8 with reduce_range, per channel."""
    return {"quantize_static S8S8": quantize_static_qdq(
                fp32, calib, out / "s8s8.onnx", activations="int8", reduce_range=False),
            "quantize_static U8S8 reduce_range": quantize_static_qdq(
                fp32, calib, out / "u8s8_rr.onnx")}


def medians(paths: dict[str, Path], runs: int) -> dict[int, dict[str, float]]:
    """p50 ms per thread count and label, by `edgecnn bench`'s engine (a process per
    file, interleaved rounds)."""
    report = run_bench(list(paths.values()), BenchConfig(threads=(1, 2), runs=runs),
                       progress=False)
    label = {path.name: name for name, path in paths.items()}
    results: dict[int, dict[str, float]] = {1: {}, 2: {}}
    for r in report.results:
        results[r.threads][label[r.name]] = r.p50_ms
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--calib", type=int, default=32, help="calibration images")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("onnx_latency.md"))
    args = parser.parse_args()

    torch.manual_seed(0)
    record = Preprocessing((224, 224), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           tuple(str(i) for i in range(1000)))
    model = create_model("mobilenet_v2").eval()
    calib = torch.randn(args.calib, 3, 224, 224)
    converted = quant.quantize(model, calib[:2], quant.PTQ(calib_batches=args.calib // 8,
                                                           batch_size=8), train_data=calib)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {"fp32": onnx_export.export_fp32(model, record, tmp / "fp32.onnx")}
        for act in onnx_export.ACTIVATION_TYPES:
            paths[f"edgecnn int8 ({act} activations)"] = onnx_export.export_qdq(
                converted, record, tmp / f"int8_{act}.onnx", activations=act)
        paths["edgecnn int8 (uint8 activations, 3-channel stem)"] = onnx_export.export_qdq(
            converted, record, tmp / "int8_unpadded.onnx", pad_channels=1)
        paths.update(quantize_static_variants(paths["fp32"], calib.numpy(), tmp))
        results = medians(paths, args.runs)

    machine = describe_machine()
    lines = [f"# onnxruntime latency, mobilenet_v2 224x224, batch 1 ({time.strftime('%Y-%m-%d')})",
             "", f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; "
             f"onnxruntime {ort.__version__}; `edgecnn bench`, {args.runs} runs in interleaved "
             "rounds, medians.", "",
             "| model | 1 thread ms | speed-up | 2 threads ms | speed-up |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for label in results[1]:
        cells = []
        for t in (1, 2):
            ms = results[t][label]
            cells += [f"{ms:.2f}", f"{results[t]['fp32'] / ms:.2f}x"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
