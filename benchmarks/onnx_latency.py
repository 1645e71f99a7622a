"""onnxruntime latency: edgecnn int8 ONNX vs fp32 vs onnxruntime.quantization.quantize_static.

mobilenet_v2 at 224x224, 1000 classes, batch 1, 1 and 2 threads. edgecnn's
default (uint8 activations, image padded to 4 channels for the stem) against
int8 activations, against no channel padding, and against quantize_static. All models run
interleaved (one call each, in turn, many rounds) so load and frequency changes
hit them alike; medians are reported. Accuracy is not the point here (random
weights, PTQ on random calibration images); tests/ check parity.

    python benchmarks/onnx_latency.py [--rounds 200] [--out benchmarks/onnx_latency.md]
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
from edgecnn.runtime.machine import describe_machine


def quantize_static_variants(fp32: Path, calib: np.ndarray, out: Path) -> dict[str, Path]:
    """onnxruntime's own QDQ quantizer: S8S8 and U8S8 with reduce_range, per channel."""
    return {"quantize_static S8S8": quantize_static_qdq(
                fp32, calib, out / "s8s8.onnx", activations="int8", reduce_range=False),
            "quantize_static U8S8 reduce_range": quantize_static_qdq(
                fp32, calib, out / "u8s8_rr.onnx")}


def interleaved_medians(paths: dict[str, Path], threads: int, rounds: int) -> dict[str, float]:
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    sessions = {}
    for label, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # as `edgecnn bench`: idle pools must not spin while the other sessions take their turn
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[label] = ort.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    times: dict[str, list[float]] = {label: [] for label in paths}
    for session in sessions.values():
        for _ in range(20):
            session.run(None, {"input": x})
    for _ in range(rounds):
        for label, session in sessions.items():
            start = time.perf_counter_ns()
            session.run(None, {"input": x})
            times[label].append((time.perf_counter_ns() - start) / 1e6)
    return {label: float(np.median(t)) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--calib", type=int, default=32, help="calibration images")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("onnx_latency.md"))
    args = parser.parse_args()

    torch.manual_seed(0)
    record = Preprocessing((224, 224), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           tuple(str(i) for i in range(1000)))
    model = create_model("mobilenet_v2").eval()
    calib = torch.randn(args.calib, 3, 224, 224)
    converted = quant.quantize(model, calib[:2], "ptq", train_data=calib,
                               calib_batches=args.calib // 8, batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {"fp32": onnx_export.export_fp32(model, record, tmp / "fp32.onnx")}
        for act in onnx_export.ACTIVATION_TYPES:
            paths[f"edgecnn int8 ({act} activations)"] = onnx_export.export_int8(
                converted, record, tmp / f"int8_{act}.onnx", activations=act)
        paths["edgecnn int8 (uint8 activations, 3-channel stem)"] = onnx_export.export_int8(
            converted, record, tmp / "int8_unpadded.onnx", pad_channels=1)
        paths.update(quantize_static_variants(paths["fp32"], calib.numpy(), tmp))
        results = {t: interleaved_medians(paths, t, args.rounds) for t in (1, 2)}

    machine = describe_machine()
    lines = [f"# onnxruntime latency, mobilenet_v2 224x224, batch 1 ({time.strftime('%Y-%m-%d')})",
             "", f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; "
             f"onnxruntime {ort.__version__}; {args.rounds} interleaved rounds, medians.", "",
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
