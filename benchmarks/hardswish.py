"""int8 hard-swish on LiteRT: the HARD_SWISH builtin against the MUL / ADD / MUL chain.

XNNPACK's TFLite delegate takes HARD_SWISH in float only, so an int8 HARD_SWISH runs on
the builtin kernel outside the delegate and splits the graph into partitions. edgecnn
lowers an int8 HardSwish to MUL by 1/6 -> ADD 1/2 (saturating to [0, 1]) -> MUL by x
(`ops.elementwise.lower_hardswish`), which XNNPACK runs. This script measures both on
mobilenet_v3_small:

- latency, p50 ms, batch 1, LiteRT at 1 and 2 threads (`edgecnn bench`'s interleaved
  engine): fp32, int8 with HARD_SWISH ("before"), int8 with the chain ("after"), at
  32 px (small-input mode, 10 classes) and 224 px (1000 classes); the models are
  untrained with BatchNorm statistics set as a trained model has them (the zoo's
  zero-initialised last BN of each block would give 1e-7 scales that no int8 kernel
  takes) and PTQ-calibrated on random images; delegate coverage of each file;
- accuracy, with a checkpoint trained on digits (`edgecnn train mobilenet_v3_small
  --data digits --out DIR`): PTQ through `edgecnn export --int8 --ptq`, then top-1 on the
  359 validation images of the int8 ONNX (onnxruntime) and of both .tflite files
  (XNNPACK and the builtin kernels), their top-1 agreement with the int8 ONNX and the
  share of logits within one output step of it.

    python benchmarks/hardswish.py --checkpoint DIR [--out DIR] [--runs 200]

Writes benchmarks/hardswish.md. "before" is made by converting the same int8 ONNX with
the single-builtin lowering put back for this script only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edgecnn import pipeline, quant
from edgecnn.artifacts import ArtifactConfig
from edgecnn.checkpoint import read_config
from edgecnn.config import Preprocessing
from edgecnn.data import load
from edgecnn.export import onnx as onnx_export
from edgecnn.export.tflite import convert
from edgecnn.export.tflite.ops.base import LOWERINGS, Lowering
from edgecnn.models import create_model
from edgecnn.runtime.bench import BenchConfig, run_bench
from edgecnn.runtime.machine import describe_machine
from edgecnn.train import to_tensors
from edgecnn.verify.litert import delegate_coverage, op_counts, run_images

MODEL = "mobilenet_v3_small"


def _hard_swish_builtin(ctx: Lowering) -> None:
    """The lowering before: one HARD_SWISH, float or int8."""
    ctx.emit("HARD_SWISH", [ctx.input(0).name], [ctx.output().name])


def convert_before(onnx_path: Path, out: Path) -> Path:
    """Convert with HardSwish lowered to the HARD_SWISH builtin (as before the chain)."""
    entries = LOWERINGS._entries  # noqa: SLF001 - swapped for this comparison only
    chain = entries["HardSwish"]
    entries["HardSwish"] = dataclasses.replace(chain, lower=_hard_swish_builtin)
    try:
        return convert(onnx_path, out)
    finally:
        entries["HardSwish"] = chain


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def latency_rows(out: Path, runs: int) -> dict:
    rows = {}
    for size in (32, 224):
        small = size <= 64
        classes = 10 if small else 1000
        directory = out / f"latency{size}"
        directory.mkdir(parents=True, exist_ok=True)
        record = Preprocessing((size, size), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                               tuple(str(i) for i in range(classes)))
        torch.manual_seed(0)
        model = _trained_like(create_model(MODEL, num_classes=classes, small_input=small))
        calib = torch.randn(16, 3, size, size)
        converted = quant.quantize(model, calib[:2], quant.PTQ(calib_batches=2, batch_size=8),
                                   train_data=calib)
        onnx_export.export_fp32(model, record, directory / "fp32.onnx")
        onnx_export.export_qdq(converted, record, directory / "int8.onnx")
        files = [convert(directory / "fp32.onnx", directory / "fp32.tflite"),
                 convert_before(directory / "int8.onnx", directory / "int8_hard_swish.tflite"),
                 convert(directory / "int8.onnx", directory / "int8_chain.tflite")]
        report = run_bench(files, BenchConfig(threads=(1, 2), runs=runs), progress=False)
        rows[size] = {
            "p50_ms": {f"{r.name}@{r.threads}": r.p50_ms for r in report.results},
            "coverage": {f.name: dataclasses.asdict(delegate_coverage(f)) for f in files},
            "ops": {f.name: dict(op_counts(f)) for f in files}}
    return rows


def accuracy_row(checkpoint: Path, out: Path) -> dict:
    report = pipeline.export_int8(MODEL, reference=checkpoint, recipe=quant.PTQ(),
                                  artifacts=ArtifactConfig(formats=("onnx",)),
                                  out=out / "ptq", show_progress=False, bench_runs=5)
    int8_onnx = out / "ptq" / "model_int8.onnx"
    files = {"hard_swish": convert_before(int8_onnx, out / "ptq" / "int8_hard_swish.tflite"),
             "chain": convert(int8_onnx, out / "ptq" / "int8_chain.tflite")}
    data = load("digits")
    x, _ = to_tensors(data.val_images, data.val_labels, read_config(checkpoint).preprocessing)
    x = x.numpy()
    session = ort.InferenceSession(str(int8_onnx), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input": x})[0]
    row = {"fp32": report.data["reference_accuracy"],
           "onnx": float((onnx_logits.argmax(1) == data.val_labels).mean())}
    for name, path in files.items():
        for kernels in ("xnnpack", "builtin"):
            q, (scale, zero) = run_images(path, x, delegate=kernels == "xnnpack")
            logits = (q.astype(np.float32) - zero) * scale
            row[f"{name}.{kernels}"] = {
                "top1": float((logits.argmax(1) == data.val_labels).mean()),
                "agreement_vs_onnx": float((logits.argmax(1) == onnx_logits.argmax(1)).mean()),
                "within_one_step_vs_onnx": float(
                    (np.abs(logits - onnx_logits) <= scale * (1 + 1e-5)).mean())}
    return row


def render(latency: dict, accuracy: dict, machine: dict, runs: int) -> str:
    lines = ["# int8 hard-swish on LiteRT: HARD_SWISH vs MUL / ADD / MUL", "",
             f"Generated by `python benchmarks/hardswish.py` on {time.strftime('%Y-%m-%d')}: "
             f"{machine['cpu']}, {machine['usable_cores']} cores, "
             + ", ".join(f"{k} {v}" for k, v in machine["packages"].items()) + ".", "",
             f"## {MODEL}, p50 latency, ms, batch 1 (LiteRT, XNNPACK; {runs} runs, "
             "interleaved)", "",
             "before: int8 with the HARD_SWISH builtin (XNNPACK runs it in float only: it "
             "falls back to the builtin kernel); after: int8 with MUL / ADD / MUL (the input's "
             "scale 3 / n, `qmath.hardswish_input_scale`: the gate is exact, the chain "
             "rounds once, in the product, as onnxruntime does). "
             "delegated: operators XNNPACK took / all, in how many partitions. The VM's 2 "
             "cores were shared with other jobs: the files of a row are measured "
             "interleaved, so ratios within a row hold, absolute values vary between runs "
             "(an earlier run, 224 px, 1 thread: fp32 5.84, before 13.94, after 5.92 ms).",
             "",
             "| input | threads | fp32 | int8 before | int8 after | fp32 / before | "
             "fp32 / after |", "|" + " --- |" * 7]
    for size, row in latency.items():
        lat = row["p50_ms"]
        for t in (1, 2):
            f, b, a = (lat[f"{n}@{t}"] for n in ("fp32.tflite", "int8_hard_swish.tflite",
                                                  "int8_chain.tflite"))
            lines.append(f"| {size} px | {t} | {f:.2f} | {b:.2f} | {a:.2f} | {f / b:.2f}x | "
                         f"{f / a:.2f}x |")
    lines += ["", "| input | file | delegated | partitions |", "|" + " --- |" * 4]
    for size, row in latency.items():
        for name, cov in row["coverage"].items():
            lines.append(f"| {size} px | {name} | {cov['delegated']} / {cov['total']} | "
                         f"{cov['partitions']} |")
    lines += ["", f"## Accuracy on digits (359 validation images, 32 px, PTQ of a checkpoint "
              f"trained by `edgecnn train {MODEL} --data digits`)", "",
              f"fp32 {100 * accuracy['fp32']:.2f}%, int8 ONNX (onnxruntime) "
              f"{100 * accuracy['onnx']:.2f}%.", "",
              "| file | kernels | top-1 | top-1 agreement vs int8 ONNX | logits within one "
              "step of int8 ONNX |", "|" + " --- |" * 5]
    for name in ("hard_swish", "chain"):
        for kernels in ("xnnpack", "builtin"):
            r = accuracy[f"{name}.{kernels}"]
            label = "before (HARD_SWISH)" if name == "hard_swish" else "after (MUL/ADD/MUL)"
            lines.append(f"| {label} | {kernels} | {100 * r['top1']:.2f}% | "
                         f"{100 * r['agreement_vs_onnx']:.2f}% | "
                         f"{100 * r['within_one_step_vs_onnx']:.2f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "edgecnn-hardswish")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    accuracy = accuracy_row(args.checkpoint, args.out)
    latency = latency_rows(args.out, args.runs)
    (args.out / "hardswish.json").write_text(json.dumps({"latency": latency,
                                                         "accuracy": accuracy}, indent=1))
    text = render(latency, accuracy, describe_machine(), args.runs)
    (Path(__file__).parent / "hardswish.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
