"""Regenerate benchmarks/RESULTS.md: the zoo x precision x runtime table.

For each zoo model:
- params and MACs at 224x224, 1000 classes;
- accuracy on digits (small-input mode, 32 px): fp32, int8 PTQ and int8 QAT through
  edgecnn's quantizer, measured on the exported int8 ONNX, with the drop in points;
  and onnxruntime.quantization.quantize_static (QDQ, per channel, U8S8 reduce_range,
  the same calibration images) on the same fp32 ONNX, for comparison;
- int8 parity on the digits validation split: the int8 ONNX (onnxruntime) and the int8
  .tflite (LiteRT with XNNPACK, and its builtin kernels as on tflite-runtime) against
  the torch fake-quant reference, and the .tflite against the int8 ONNX;
- p50 latency, batch 1, at 224x224 (1000 classes, PTQ on random images: latency does
  not depend on the weights' values) for fp32 and int8 on onnxruntime and LiteRT at
  1 and 2 threads, measured interleaved by `edgecnn bench`'s engine.

    python benchmarks/zoo.py [--models dsc_net,mobilenet_v2] [--cache DIR] [--runs 100]
                             [--litert-torch DIR]

With --litert-torch, litert-torch's own mobilenet_v2 files (made in their own
environment by benchmarks/litert_torch_artifacts.py) are benched beside edgecnn's.

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
import onnxruntime as ort
import torch

from edgecnn import pipeline, quant
from edgecnn.artifacts import ArtifactConfig
from edgecnn.checkpoint import read_config
from edgecnn.config import ArtifactMetadata, Preprocessing
from edgecnn.data import load
from edgecnn.export import onnx as onnx_export
from edgecnn.export.tflite import convert
from edgecnn.models import create_model, models
from edgecnn.models.stats import model_stats
from edgecnn.reference import Training, train_reference
from edgecnn.runtime.bench import BenchConfig, run_bench
from edgecnn.runtime.machine import describe_machine
from edgecnn.runtime.validate import Bounds, run_validate
from edgecnn.train import TrainConfig, to_tensors
from edgecnn.verify.builtin_int8 import check_builtin
from edgecnn.verify.litert import op_counts, run_images

SCHEDULES = {"dsc_net": TrainConfig(epochs=10, lr=5e-3)}
DEFAULT_SCHEDULE = TrainConfig(epochs=6, lr=2e-3)
CALIB_IMAGES = 512
BUILTIN_CHECK_IMAGES = 100


def accuracy_row(name: str, cache: Path) -> dict:
    """fp32 / PTQ / QAT on digits through `edgecnn export --int8`, and quantize_static."""
    checkpoint = cache / name / "checkpoint"
    if not (checkpoint / "checkpoint.pt").is_file():
        train_reference(name, "digits", checkpoint,
                        Training(SCHEDULES.get(name, DEFAULT_SCHEDULE)), show_progress=False)
    row = {}
    for method in ("ptq", "qat"):
        report = pipeline.export_int8(name, reference=checkpoint,
                                      recipe=quant.METHODS[method](),
                                      artifacts=ArtifactConfig(formats=("onnx",)),
                                      out=cache / name / method,
                                      show_progress=False, bench_runs=20)
        row["fp32"] = report.data["reference_accuracy"]
        row[method] = report.artifact("model_int8.onnx").accuracy
    fp32_onnx = cache / name / "ptq" / "model_fp32.onnx"
    config = read_config(checkpoint)
    data = load("digits")
    calib, _ = to_tensors(data.train_images[:CALIB_IMAGES], data.train_labels[:CALIB_IMAGES],
                          config.preprocessing)
    static = quantize_static_qdq(fp32_onnx, calib.numpy(), cache / name / "quantize_static.onnx",
                                  config.preprocessing)
    result = run_validate(fp32_onnx, [static], "digits", Bounds(min_agreement=0.0))
    row["quantize_static"] = result.candidates[0].accuracy
    return row


def quantize_static_qdq(fp32: Path, calib: np.ndarray, out: Path,
                        record: Preprocessing | None = None, *, activations: str = "uint8",
                        reduce_range: bool = True) -> Path:
    """onnxruntime.quantization.quantize_static, QDQ, per channel, int8 weights, calibrated
    on `calib` (batches of 32). The default is its best x86 recipe, U8S8 with reduce_range."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    activation_type = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[activations]
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=activation_type, weight_type=QuantType.QInt8,
                    reduce_range=reduce_range)
    pre.unlink()
    if record is None:
        return out
    proto = onnx.load(str(out))
    onnx_export.attach_metadata(proto, ArtifactMetadata(record, model="quantize_static",
                                                        precision="int8"))
    onnx.save(proto, str(out))
    return out


def parity_row(name: str, cache: Path) -> dict:
    """Top-1 agreement and share of logits within N output steps, per method and pair."""
    data = load("digits")
    row = {}
    for method in ("ptq", "qat"):
        program, metadata = quant.load_program(cache / name / method / "quantized")
        x, _ = to_tensors(data.val_images, data.val_labels, metadata.preprocessing)
        with torch.no_grad():
            fake_quant = program.module()(x).numpy()
        int8_onnx = cache / name / method / "model_int8.onnx"
        int8_tflite = convert(int8_onnx, cache / name / method / "model_int8.tflite")
        session = ort.InferenceSession(str(int8_onnx), providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {"input": x.numpy()})[0]
        tflite = {}
        for kernels in ("xnnpack", "builtin"):
            q, (scale, zero) = run_images(int8_tflite, x.numpy(), delegate=kernels == "xnnpack")
            tflite[kernels] = ((q.astype(np.float32) - zero) * scale, scale)
        row[method] = {"onnx_vs_fake_quant": parity(onnx_logits, fake_quant, scale, 2)}
        for delegate, (logits, _) in tflite.items():
            row[method][f"tflite_{delegate}_vs_fake_quant"] = parity(logits, fake_quant, scale, 1)
            row[method][f"tflite_{delegate}_vs_onnx"] = parity(logits, onnx_logits, scale, 1)
        row[method]["accuracy"] = {
            k: float((v.argmax(1) == data.val_labels).mean()) for k, v in (
                ("fake_quant", fake_quant), ("onnx", onnx_logits),
                *((f"tflite_{d}", logits) for d, (logits, _) in tflite.items()))}
        row[method]["builtin_ops"] = builtin_ops(int8_tflite, x.numpy()[:BUILTIN_CHECK_IMAGES])
    return row


def builtin_ops(tflite: Path, images: np.ndarray) -> dict:
    """The builtin kernels against `builtin_int8`'s emulation: ops checked and bit-exact,
    and per op type the share of outputs float requantization gives differently."""
    checks = check_builtin(tflite, images)
    drift = {}
    for op in sorted({c.op for c in checks}):
        mine = [c for c in checks if c.op == op]
        drift[op] = sum(c.float_differs for c in mine) / sum(c.elements for c in mine)
    return {"ops": len(checks), "bit_exact": sum(c.mismatches == 0 for c in checks),
            "drift": drift}


def parity(got: np.ndarray, reference: np.ndarray, scale: float, steps: int) -> dict:
    return {"agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
            "within": float((np.abs(got - reference) <= steps * scale * (1 + 1e-5)).mean()),
            "steps": steps}


def latency_row(name: str, cache: Path, runs: int) -> dict:
    """p50 ms at 224 px: fp32 / int8 x onnxruntime / LiteRT x 1 / 2 threads."""
    directory = cache / name / "latency224"
    directory.mkdir(parents=True, exist_ok=True)
    record = Preprocessing((224, 224), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           tuple(str(i) for i in range(1000)))
    files = {k: directory / k for k in ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite",
                                         "static.onnx")}
    if not all(p.is_file() for p in files.values()):
        torch.manual_seed(0)
        model = create_model(name).eval()
        calib = torch.randn(16, 3, 224, 224)
        converted = quant.quantize(model, calib[:2], quant.PTQ(calib_batches=2, batch_size=8),
                                   train_data=calib)
        onnx_export.export_fp32(model, record, files["fp32.onnx"])
        onnx_export.export_qdq(converted, record, files["int8.onnx"])
        quantize_static_qdq(files["fp32.onnx"], calib.numpy(), files["static.onnx"], record)
    row = {}
    for precision in ("fp32", "int8"):  # converted on every run: the conversion time is a figure
        start = time.perf_counter()
        convert(files[f"{precision}.onnx"], files[f"{precision}.tflite"])
        row[f"convert_s.{precision}"] = time.perf_counter() - start
    report = run_bench(list(files.values()), BenchConfig(threads=(1, 2), runs=runs),
                       progress=False)
    return row | {f"{r.name}@{r.threads}": r.p50_ms for r in report.results}


def litert_torch_row(directory: Path, cache: Path, runs: int) -> dict:
    """litert-torch's float / int8 mobilenet_v2 against edgecnn's, interleaved on LiteRT."""
    ours = cache / "mobilenet_v2" / "latency224"
    files = [directory / "litert_torch_fp32.tflite", directory / "litert_torch_int8.tflite",
             ours / "fp32.tflite", ours / "int8.tflite"]
    report = run_bench(files, BenchConfig(threads=(1, 2), runs=runs), progress=False)
    record = json.loads((directory / "litert_torch.json").read_text())
    row = {"version": record["litert_torch"], "convert_s": record["conversion_seconds"],
           "ops": {f.name: dict(op_counts(f)) for f in files},
           "latency": {f"{r.name}@{r.threads}": r.p50_ms for r in report.results}}
    digits = directory / "litert_torch_int8_digits.tflite"
    if digits.is_file():
        row["parity"] = litert_torch_parity(digits, cache)
    return row


def litert_torch_parity(tflite: Path, cache: Path) -> dict:
    """litert-torch's int8 of the digits-trained mobilenet_v2 against its own fake-quant
    logits (saved beside it), as `parity_row` measures edgecnn's."""
    data = load("digits")
    config = read_config(cache / "mobilenet_v2" / "checkpoint")
    x, _ = to_tensors(data.val_images, data.val_labels, config.preprocessing)
    fake_quant = np.load(tflite.with_name("litert_torch_int8_digits_fake_quant.npy"))
    row = {"ops": dict(op_counts(tflite))}
    for kernels in ("xnnpack", "builtin"):
        q, (scale, zero) = run_images(tflite, x.numpy(), delegate=kernels == "xnnpack")
        logits = (q.astype(np.float32) - zero) * scale
        row[f"tflite_{kernels}_vs_fake_quant"] = parity(logits, fake_quant, scale, 1)
    return row


def machine_line(machine: dict) -> str:
    return (f"{machine['cpu']}, {machine['usable_cores']} cores, {machine['os']}, Python "
            f"{machine['python']}, " + ", ".join(f"{k} {v}" for k, v in
                                                 machine["packages"].items()))


def provenance(rows: dict[str, dict]) -> list[str]:
    """When and where each row was measured: rows cached from an earlier run keep their own
    date and machine, never today's header."""
    groups: dict[str, list[str]] = {}
    for name, r in rows.items():
        m = r.get("measured")
        key = (f"{m['date']}: {machine_line(m['machine'])}" if m
               else "an earlier run (date and machine not recorded)")
        groups.setdefault(key, []).append(name)
    if len(groups) == 1:
        return [f"Generated by `python benchmarks/zoo.py`, measured on {next(iter(groups))}"]
    return ["Generated by `python benchmarks/zoo.py` from rows measured at different times:", "",
            *(f"- {', '.join(names)}: {key}" for key, names in groups.items())]


def render(rows: dict[str, dict], args: argparse.Namespace,
           litert_torch: dict | None = None) -> str:
    lines = [
        "# edgecnn zoo results", "", *provenance(rows),
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
    lines += ["", "### onnxruntime int8, edgecnn vs quantize_static (U8S8, reduce_range); "
              "ONNX -> TFLite conversion time", "",
              "| model | edgecnn 1t | quantize_static 1t | edgecnn 2t | quantize_static 2t | "
              "convert fp32 s | convert int8 s |", "|" + " --- |" * 7]
    for name, r in rows.items():
        lat = r["latency"]
        lines.append(f"| {name} | " + " | ".join(
            f"{lat[f'{k}.onnx@{t}']:.2f}" for t in (1, 2) for k in ("int8", "static")) +
            f" | {lat['convert_s.fp32']:.2f} | {lat['convert_s.int8']:.2f} |")
    lines += ["", "## int8 parity on digits (359 validation images)", "",
              "Top-1 agreement / share of logits within N output quantization steps "
              "(N = 2 for ONNX, 1 for TFLite). FQ: the torch fake-quant reference (the "
              "converted PT2E program). TFLite XNNPACK: LiteRT's default delegate; builtin: "
              "LiteRT without delegates, the kernels tflite-runtime runs on a Raspberry Pi.", "",
              "| model | method | ONNX vs FQ | TFLite XNNPACK vs FQ | TFLite builtin vs FQ | "
              "TFLite XNNPACK vs ONNX | TFLite builtin vs ONNX |", "|" + " --- |" * 7]
    pairs = ("onnx_vs_fake_quant", "tflite_xnnpack_vs_fake_quant", "tflite_builtin_vs_fake_quant",
             "tflite_xnnpack_vs_onnx", "tflite_builtin_vs_onnx")
    for name, r in rows.items():
        for method, figures in r["parity"].items():
            lines.append(f"| {name} | {method.upper()} | " + " | ".join(
                f"{100 * figures[k]['agreement']:.2f}% / {100 * figures[k]['within']:.2f}%"
                for k in pairs) + " |")
    lines += render_builtin(rows)
    if litert_torch:
        lines += render_litert_torch(litert_torch, rows["mobilenet_v2"])
    return "\n".join(lines) + "\n"


DRIFT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN")


def render_builtin(rows: dict[str, dict]) -> list[str]:
    lines = ["", "### The builtin kernels' arithmetic", "",
             "Top-1 accuracy on digits of each int8 runtime. Then `builtin_int8.check_builtin` "
             f"on {BUILTIN_CHECK_IMAGES} images: how many of the file's CONV_2D, "
             "DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD and MEAN ops the builtin kernels "
             "computed bit for bit as the emulated TFLite fixed-point arithmetic from the "
             "inputs they read, and per op type the share of outputs that float "
             "requantization (XNNPACK, onnxruntime, fake quant) of the same inputs gives "
             "differently: the drift each builtin op adds, which compounds with depth.", "",
             "| model | method | FQ | ONNX | XNNPACK | builtin | ops bit-exact | " +
             " | ".join(f"drift {op}" for op in DRIFT_OPS) + " |", "|" + " --- |" * 12]
    for name, r in rows.items():
        for method, figures in r["parity"].items():
            acc, ops = figures.get("accuracy"), figures.get("builtin_ops")
            if not acc or not ops:
                continue
            lines.append(
                f"| {name} | {method.upper()} | " + " | ".join(
                    f"{100 * acc[k]:.2f}" for k in ("fake_quant", "onnx", "tflite_xnnpack",
                                                    "tflite_builtin")) +
                f" | {ops['bit_exact']} / {ops['ops']} | " + " | ".join(
                    f"{100 * ops['drift'][op]:.2f}%" if op in ops["drift"] else "-"
                    for op in DRIFT_OPS) + " |")
    return lines


def render_litert_torch(lt: dict, mobilenet: dict) -> list[str]:
    lat, ops, ours = lt["latency"], lt["ops"], mobilenet["latency"]
    lines = ["", f"## mobilenet_v2 at 224 against litert-torch {lt['version']}", "",
             "litert-torch's float and PT2E int8 (its PT2EQuantizer, symmetric per channel) "
             "conversions of the same model (`benchmarks/litert_torch_artifacts.py`), benched "
             "interleaved with edgecnn's files on LiteRT (XNNPACK), p50 ms.", "",
             "| converter | fp32 1t | int8 1t | fp32 2t | int8 2t | conversion fp32 / int8 s | "
             "int8 TRANSPOSE / QUANTIZE / DEQUANTIZE |", "|" + " --- |" * 7]
    for label, prefix, seconds in (
            ("litert-torch", "litert_torch_", (lt["convert_s"]["fp32"], lt["convert_s"]["int8"])),
            ("edgecnn", "", (ours["convert_s.fp32"], ours["convert_s.int8"]))):
        counts = ops[f"{prefix}int8.tflite"]
        lines.append(
            f"| {label} | " + " | ".join(f"{lat[f'{prefix}{p}.tflite@{t}']:.2f}"
                                        for t in (1, 2) for p in ("fp32", "int8")) +
            f" | {seconds[0]:.2f} / {seconds[1]:.2f} | " +
            " / ".join(str(counts.get(k, 0)) for k in ("TRANSPOSE", "QUANTIZE", "DEQUANTIZE")) +
            " |")
    if "parity" in lt:
        lines += ["", "The digits-trained mobilenet_v2 (small-input mode) through each "
                  "converter's int8 path (litert-torch: its PT2EQuantizer, calibrated on the "
                  f"same {CALIB_IMAGES} images; edgecnn: PTQ), each .tflite against its own "
                  "torch fake-quant program on the 359 validation images: top-1 agreement / "
                  "logits within one output step.", "",
                  "| converter | XNNPACK vs FQ | builtin vs FQ |", "| --- | --- | --- |"]
        for label, figures in (("litert-torch", lt["parity"]),
                               ("edgecnn", mobilenet["parity"]["ptq"])):
            lines.append(f"| {label} | " + " | ".join(
                f"{100 * figures[k]['agreement']:.2f}% / {100 * figures[k]['within']:.2f}%"
                for k in ("tflite_xnnpack_vs_fake_quant", "tflite_builtin_vs_fake_quant")) +
                " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate benchmarks/RESULTS.md")
    parser.add_argument("--models", default=",".join(models))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgecnn-zoo")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--litert-torch", type=Path, metavar="DIR",
                        help="litert-torch's mobilenet_v2 files from "
                             "benchmarks/litert_torch_artifacts.py, benched beside edgecnn's")
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
                      "parity": parity_row(name, args.cache),
                      "latency": latency_row(name, args.cache, args.runs),
                      "measured": {"date": time.strftime("%Y-%m-%d"),
                                   "machine": describe_machine()}}
        args.cache.mkdir(parents=True, exist_ok=True)
        results_json.write_text(json.dumps(rows, indent=2))
        print(f"{name}: {time.perf_counter() - start:.0f}s {rows[name]}", flush=True)
    if args.litert_torch:
        rows["litert_torch"] = litert_torch_row(args.litert_torch, args.cache, args.runs)
        results_json.write_text(json.dumps(rows, indent=2))
    text = render({n: rows[n] for n in models if n in rows}, args, rows.get("litert_torch"))
    from _sections import keep_sections  # the other scripts' sections of RESULTS.md stay

    text = keep_sections(args.out, text)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    np.seterr(all="ignore")
    main()
