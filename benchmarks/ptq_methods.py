"""PTQ steps against plain PTQ: bias correction, cross-layer equalization, both, and one
`--fallback float` step, on mobilenet_v2 and efficientnet_b0.

For each model and input size: an fp32 checkpoint on digits, then `edgecnn export
--int8 --ptq` with none / --bias-correction / --cle / --cle --bias-correction, and one
fallback step (the first group `edgecnn.fallback` ranks on plain PTQ's int8 .tflite,
kept float). Per variant: top-1 drop and agreement with the fp32 ONNX of both int8
artifacts (onnxruntime and LiteRT, the 359 validation images), and p50 latency at 1
thread at that input size.

The fp32 checkpoints: at 32 px (small-input mode) trained from scratch with the zoo
benchmark's schedule (6 epochs, AdamW 2e-3); at 224 px fine-tuned from the 32-px
weights (3 epochs, every layer at 1e-3; the small-input mode changes strides only, so
the tensors fit). From scratch at 224 px, digits' 1,437 training images gave 17.5%
after 3 epochs (at 96 px), and each 224-px epoch of these models takes ~2 minutes on 2
cores.

The PTQ steps change weight and bias values only, never the graph (checked below: the
ONNX op counts of every variant equal plain PTQ's), so their int8 latency is plain
PTQ's; the fallback step's float layers cost what the p50 columns show. The 32-px rows
also measure a 224-px latency on random weights (`--no-224` skips it).

    nice python benchmarks/ptq_methods.py [--models A,B] [--sizes 32,224] [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from edgecnn import pipeline, quant
from edgecnn.config import Preprocessing
from edgecnn.export import onnx as onnx_export
from edgecnn.export.tflite import convert
from edgecnn.fallback import patterns, rank_groups, rank_layers
from edgecnn.models import create_model
from edgecnn.quant.recipe import PTQ
from edgecnn.quant.spec import QuantConfig
from edgecnn.reference import Pretrained, Training, train_reference
from edgecnn.runtime.bench import BenchConfig, run_bench
from edgecnn.runtime.machine import describe_machine
from edgecnn.runtime.validate import Bounds
from edgecnn.train import TrainConfig

MODELS = ("mobilenet_v2", "efficientnet_b0")
SCHEDULE = TrainConfig(epochs=6, lr=2e-3)  # the zoo benchmark's default schedule
#: from the 32-px weights to a larger input: every layer trains at the same rate
FINE_TUNE = TrainConfig(epochs=3, lr=1e-3, backbone_lr_factor=1.0)
MEASURE_ONLY = Bounds(max_drop=100.0, min_agreement=0.0)  # the table judges, not the gate
VARIANTS = {"none": PTQ(), "bias correction": PTQ(bias_correction=True), "CLE": PTQ(cle=True),
            "CLE + bias correction": PTQ(cle=True, bias_correction=True)}
ARTIFACTS = ("model_int8.onnx", "model_int8.tflite")


def op_counts(path: Path) -> dict[str, int]:
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def reference(name: str, cache: Path, schedule: TrainConfig, size: int,
              fine_tune: TrainConfig) -> Path:
    """The fp32 checkpoint at `size` px: 32 px trained from scratch with `schedule`; a
    larger size fine-tuned from the 32-px weights with `fine_tune` (the small-input mode
    only changes strides, so every tensor has the same shape at 224)."""
    checkpoint = cache / name / "checkpoint"
    if not (checkpoint / "checkpoint.pt").is_file():
        start = time.perf_counter()
        train_reference(name, "digits", checkpoint, Training(schedule), show_progress=False)
        print(f"{name}: trained in {time.perf_counter() - start:.0f}s", flush=True)
    if size == 32:
        return checkpoint
    larger = cache / name / f"checkpoint_{size}"
    if not (larger / "checkpoint.pt").is_file():
        start = time.perf_counter()
        train_reference(name, "digits", larger,
                        Training(fine_tune, input_size=size,
                                 pretrained=Pretrained(checkpoint / "checkpoint.pt")),
                        show_progress=False)
        print(f"{name}: fine-tuned at {size} px in {time.perf_counter() - start:.0f}s",
              flush=True)
    return larger


def accuracy_rows(name: str, cache: Path, runs: int, schedule: TrainConfig = SCHEDULE,
                  size: int = 32, fine_tune: TrainConfig = FINE_TUNE) -> dict:
    checkpoint = reference(name, cache, schedule, size, fine_tune)
    fp32 = json.loads((checkpoint / "metrics.json").read_text())
    suffix = "" if size == 32 else f"_{size}"
    rows, first = {}, None
    for variant, recipe in VARIANTS.items():
        out = cache / name / (variant.replace(" ", "_").replace("+", "and") + suffix)
        report = pipeline.export_int8(name, reference=checkpoint, recipe=recipe, out=out,
                                      bounds=MEASURE_ONLY, bench_runs=runs, show_progress=False)
        rows[variant] = row(report, out)
        first = first or out
        print(f"{name} {variant}: {rows[variant]}", flush=True)
    metrics = json.loads((first / "quantized" / "metrics.json").read_text())
    ranking = rank_layers(first / "model_fp32.onnx", [first / a for a in ARTIFACTS], "digits",
                          seed=0)
    group = rank_groups(ranking, metrics["int8_layers"])[0]
    out = cache / name / ("fallback_step" + suffix)
    report = pipeline.export_int8(name, reference=checkpoint, recipe=PTQ(), out=out,
                                  quant=QuantConfig(keep_float=patterns(group)),
                                  bounds=MEASURE_ONLY, bench_runs=runs, show_progress=False)
    rows["one fallback step"] = {**row(report, out), "moved": group}
    print(f"{name} fallback: {rows['one fallback step']}", flush=True)
    return {"fp32": report.data["reference_accuracy"], "train": fp32, "rows": rows,
            "moved": group}


def row(report, out: Path) -> dict:
    entry = {"ops": op_counts(out / "model_int8.onnx"),
             "ptq_methods": report.data.get("ptq_methods", {})}
    for name in ARTIFACTS:
        a = report.artifact(name)
        entry[name] = {"drop": a.drop, "agreement": a.agreement,
                       "p50_1t": a.p50_fewest_threads_ms}
    return entry


def latency_224(name: str, moved: list[str], cache: Path, runs: int) -> dict:
    """p50 ms at 224 px, 1 thread, of the int8 ONNX / .tflite: plain PTQ and with `moved`
    kept float (random weights and calibration images: latency does not depend on them)."""
    directory = cache / name / "latency224"
    directory.mkdir(parents=True, exist_ok=True)
    record = Preprocessing((224, 224), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           tuple(str(i) for i in range(10)))
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    calib = torch.randn(16, 3, 224, 224)
    files = []
    for label, keep in (("none", ()), ("fallback", patterns(moved))):
        onnx_path = directory / f"{label}_int8.onnx"
        converted = quant.quantize(model, calib[:2], PTQ(calib_batches=2, batch_size=8),
                                   train_data=calib, config=QuantConfig(keep_float=keep))
        onnx_export.export_qdq(converted, record, onnx_path)
        files += [onnx_path, convert(onnx_path, onnx_path.with_suffix(".tflite"))]
    report = run_bench(files, BenchConfig(threads=(1,), runs=runs), progress=False)
    return {r.name: r.p50_ms for r in report.results}


def markdown(results: dict, machine: dict) -> str:
    lines = ["# PTQ steps against plain PTQ (`python benchmarks/ptq_methods.py`)", "",
             f"Generated {time.strftime('%Y-%m-%d')} on {machine.get('cpu', '?')} "
             f"({machine.get('usable_cores', '?')} cores, shared with other jobs: latencies are "
             "noisy, compare within a table).", "",
             "Accuracy: digits, 359 validation images. fp32 checkpoints: at 32 px "
             f"(small-input mode) trained from scratch (AdamW, lr {SCHEDULE.lr}); at 224 px "
             f"fine-tuned from those weights for {FINE_TUNE.epochs} epochs (lr {FINE_TUNE.lr}, "
             "every layer; digits' 1,437 training images do not train these networks from "
             "scratch at 224 px in a few epochs: 17.5% after 3 epochs at 96 px). Drop: "
             "fp32 ONNX top-1 minus int8 top-1, points (one image is 0.28); agreement: int8 "
             "top-1 equal to fp32's. p50: batch 1, 1 thread, at the model's input size.", ""]
    for key, result in results.items():
        epochs = result.get("epochs", SCHEDULE.epochs)
        size = result.get("size", 32)
        trained = (f"{epochs} epochs" if size == 32 else
                   f"{epochs} epochs at 32 px + {result.get('fine_tune_epochs')} at {size} px")
        lines += [f"## {result.get('model', key)} at {size} px (fp32 {100 * result['fp32']:.2f}%, "
                  f"{trained})", "",
                  "| PTQ | ONNX drop | ONNX agree | TFLite drop | TFLite agree | ONNX p50 ms "
                  "| TFLite p50 ms | what was done |", "|" + " --- |" * 8]
        for variant, entry in result["rows"].items():
            o, t = entry["model_int8.onnx"], entry["model_int8.tflite"]
            lines.append(f"| {variant} | {o['drop']:+.2f} | {100 * o['agreement']:.1f}% | "
                         f"{t['drop']:+.2f} | {100 * t['agreement']:.1f}% | {o['p50_1t']:.3f} | "
                         f"{t['p50_1t']:.3f} | {describe(variant, entry)} |")
        same = all(e["ops"] == result["rows"]["none"]["ops"]
                   for v, e in result["rows"].items() if v != "one fallback step")
        lines += ["", f"Op counts of the int8 ONNX identical across none / BC / CLE: {same}."]
        if result.get("latency224"):
            lat = result["latency224"]
            lines += ["", "p50 ms at 224 px, 1 thread (same architecture, 10 classes):", "",
                      "| int8 | ONNX (onnxruntime) | TFLite (LiteRT) |", "| --- | --- | --- |",
                      f"| PTQ (none / BC / CLE: the same graph) | {lat['none_int8.onnx']:.2f} | "
                      f"{lat['none_int8.tflite']:.2f} |",
                      f"| one fallback step ({', '.join(result['moved'])} float) | "
                      f"{lat['fallback_int8.onnx']:.2f} | {lat['fallback_int8.tflite']:.2f} |"]
        lines.append("")
    lines += [line for line in results_section(results).splitlines()
              if line.startswith("Not measured")]
    return "\n".join(lines) + "\n"




def results_section(results: dict) -> str:
    """The RESULTS.md summary: drop / agreement per variant (TFLite, LiteRT) per model."""
    lines = ["## PTQ steps: bias correction, cross-layer equalization, one fallback step", "",
             "`python benchmarks/ptq_methods.py` (details, ONNX columns and latencies: "
             "benchmarks/ptq_methods.md). Digits, 359 validation images, at 32 px "
             "(small-input mode) and 224 px (fine-tuned from the 32-px weights); int8 .tflite "
             "on LiteRT against the fp32 ONNX: drop in points / top-1 "
             "agreement. Plain PTQ of these models loses at most a few of the 359 images "
             "here, so the steps have little to recover; CLE only finds the pairs joined by "
             "no activation (ReLU6 / SiLU pairs are left alone to keep fp32 exact), and "
             "neither step changes the graph or its latency. Where one channel's range "
             "crushes the others (the planted model of tests/test_ptq_methods.py, factor "
             "300), CLE with bias correction brings a drop of tens of points back within 2.",
             "",
             "| model, input (fp32) | none | bias correction | CLE | CLE + BC | one fallback "
             "step |", "| --- | --- | --- | --- | --- | --- |"]
    for key, result in results.items():
        cells = []
        for variant in (*VARIANTS, "one fallback step"):
            t = result["rows"].get(variant, {}).get("model_int8.tflite")
            cells.append(f"{t['drop']:+.2f} / {100 * t['agreement']:.1f}%" if t else "-")
        lines.append(f"| {result.get('model', key)}, {result.get('size', 32)} px "
                     f"({100 * result['fp32']:.2f}%) | " + " | ".join(cells) + " |")
    have = {(r.get("model", k), r.get("size", 32)) for k, r in results.items()}
    missing = [f"{m} at {size} px" for m in MODELS for size in (32, 224)
               if (m, size) not in have]
    if missing:
        lines += ["", f"Not measured: {', '.join(missing)} (the fine-tuning and five 224-px "
                  "exports did not fit the session on the shared 2-core machine; `--models M "
                  "--sizes "
                  "224` measures it)."]
    return "\n".join(lines) + "\n"


def update_results(path: Path, section: str) -> None:
    from _sections import update_section  # a sibling module: benchmarks/ is sys.path[0]

    update_section(path, "ptq_methods", section)


def describe(variant: str, entry: dict) -> str:
    record = entry.get("ptq_methods") or {}
    parts = []
    if "cle" in record:
        parts.append(f"{len(record['cle']['pairs'])} pairs equalized, "
                     f"{len(record['cle']['skipped_activation'])} skipped (ReLU6 / SiLU)")
    if "bias_correction" in record:
        parts.append(f"{record['bias_correction']['layers']} biases corrected")
    if "moved" in entry:
        parts.append(f"float: {', '.join(entry['moved'])}")
    return "; ".join(parts) or "plain PTQ"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "edgecnn-ptq-methods")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="32,224",
                        help="input sizes, px (32: small-input mode from scratch; larger: "
                             "fine-tuned from the 32-px weights)")
    parser.add_argument("--no-224", action="store_true",
                        help="skip the 224-px latency of the 32-px rows")
    parser.add_argument("--epochs", type=int, default=SCHEDULE.epochs,
                        help="fp32 training epochs at 32 px (the zoo's 6 by default)")
    parser.add_argument("--fine-tune-epochs", type=int, default=FINE_TUNE.epochs)
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--from-json", type=Path, nargs="*",
                        help="only rewrite the tables from these results.json files")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    store = args.cache / "results.json"
    results = {k: v for p in (args.from_json or [store] if store.is_file() else [])
               for k, v in json.loads(p.read_text()).items()}
    if not args.from_json:
        fine_tune = replace(FINE_TUNE, epochs=args.fine_tune_epochs)
        for name in args.models.split(","):
            for size in map(int, args.sizes.split(",")):
                schedule = replace(SCHEDULE, epochs=args.epochs)
                result = accuracy_rows(name, args.cache, args.runs, schedule, size, fine_tune)
                result.update(model=name, size=size, epochs=args.epochs,
                              fine_tune_epochs=None if size == 32 else fine_tune.epochs)
                if size == 32 and not args.no_224:
                    result["latency224"] = latency_224(name, result["moved"], args.cache,
                                                       args.runs)
                results[name if size == 32 else f"{name}@{size}"] = result
                args.cache.mkdir(parents=True, exist_ok=True)
                store.write_text(json.dumps(results, indent=2, default=str))
                args.out.write_text(markdown(results, describe_machine()))
                update_results(args.results, results_section(results))
                print(f"wrote {args.out}, {args.results}", flush=True)
    args.out.write_text(markdown(results, describe_machine()))
    update_results(args.results, results_section(results))


if __name__ == "__main__":
    sys.exit(main())
