"""Stages that string the modules together; the CLI and the Python API call these."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from edgecnn import __version__
from edgecnn.checkpoint import ModelConfig, load_checkpoint, read_config, save_checkpoint
from edgecnn.data import load
from edgecnn.errors import EdgecnnError
from edgecnn.models import create_model
from edgecnn.progress import console
from edgecnn.report import Report
from edgecnn.train import TrainConfig, model_options_for, preprocessing_for, train
from edgecnn.util import atomic_write

FORMATS = ("onnx", "tflite")


def train_reference(model_name: str, data: str, directory: Path,
                    config: TrainConfig | None = None, *, input_size: int | None = None,
                    width_mult: float = 1.0, show_progress: bool = True,
                    preflight: str | None = None, formats: tuple[str, ...] = FORMATS,
                    io: str = "int8") -> dict:
    """Train the fp32 reference and write checkpoint.pt, config.json and metrics.json.

    preflight: "error" or "warn" first checks, on the untrained model, that it exports
    to int8 `formats` (`edgecnn.preflight`), and raises or warns before any epoch.
    """
    config = config or TrainConfig()
    dataset = load(data, seed=config.seed)
    preprocessing = preprocessing_for(dataset, input_size)
    options = model_options_for(preprocessing, width_mult)
    torch.manual_seed(config.seed)  # weight init is part of the seeded run
    model = create_model(model_name, **options)
    if preflight is not None:
        _preflight(model, preprocessing, formats, io, preflight)
    metrics = train(model, dataset, preprocessing, config, show_progress=show_progress)
    save_checkpoint(Path(directory), model, ModelConfig(model_name, preprocessing, options, data))
    metrics = {"model": model_name, "data": data, **metrics}
    with atomic_write(Path(directory) / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return metrics


class PreflightWarning(UserWarning):
    """The model trains, but its export to int8 would fail (named in the message)."""


def _preflight(model: torch.nn.Module, preprocessing, formats: tuple[str, ...], io: str,
               mode: str) -> None:
    from edgecnn.preflight import check_exportable

    state = copy.deepcopy(model.state_dict())
    try:
        check_exportable(model, preprocessing, formats=formats, io=io)
    except EdgecnnError as exc:
        if mode == "error":
            raise
        warnings.warn(f"{exc}; training anyway", PreflightWarning, stacklevel=3)
    finally:
        model.load_state_dict(state)  # the seeded initial weights, untouched


def export_onnx(checkpoint: Path, out_dir: Path, *, model_name: str | None = None,
                quantized: Path | None = None, activations: str | None = None) -> Path:
    """Write `model_fp32.onnx` from a checkpoint, or `model_int8.onnx` from a quantized dir."""
    from edgecnn.export import onnx as onnx_export

    model, config = load_checkpoint(Path(checkpoint), model_name)
    out_dir = Path(out_dir)
    if quantized is None:
        return onnx_export.export_fp32(model, config.preprocessing, out_dir / "model_fp32.onnx",
                                       model_name=config.model)
    from edgecnn import quant

    program, metadata = quant.load(Path(quantized))
    return onnx_export.export_int8(program, metadata.preprocessing, out_dir / "model_int8.onnx",
                                   model_name=config.model,
                                   activations=activations or onnx_export.DEFAULT_ACTIVATIONS)


def export_artifacts(checkpoint: Path, out_dir: Path, *, model_name: str | None = None,
                     formats: tuple[str, ...] = ("onnx",), quantized: Path | None = None,
                     io: str = "int8", activations: str | None = None) -> list[Path]:
    """fp32 (or, with `quantized`, int8) artifacts in `formats`; TFLite goes through ONNX."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise EdgecnnError(f"--formats {','.join(formats)}: supported are {', '.join(FORMATS)}")
    onnx_path = export_onnx(checkpoint, out_dir, model_name=model_name, quantized=quantized,
                            activations=activations)
    written = [onnx_path] if "onnx" in formats else []
    if "tflite" in formats:
        from edgecnn.export.tflite import convert

        written.append(convert(onnx_path, onnx_path.with_suffix(".tflite"),
                               io=io if quantized else "float"))
    if "onnx" not in formats:
        onnx_path.unlink()
    return written


# --- `edgecnn export --int8`: model -> validated, benchmarked int8 artifacts ---------------

#: fp32 schedule used when no checkpoint is given: short, small-input mode on small images.
DEFAULT_TRAIN = TrainConfig(epochs=6, lr=3e-3)


def _digest(*parts: object) -> str:
    """A stage key: its inputs, and the edgecnn version (a new release redoes the stage)."""
    return hashlib.sha256(json.dumps([__version__, *parts], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def _files_digest(path: Path) -> str:
    """Content hash of a file, or of every file under a directory (names and bytes)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def data_digest(spec: str) -> str:
    """`digits` is its name; a local dataset is hashed by content (files change, hash changes)."""
    _, _, arg = spec.partition(":")
    return _files_digest(Path(arg)) if arg and Path(arg).exists() else spec


class _Stage:
    """A pipeline step whose outputs are reused while its key (inputs' hash) is unchanged."""

    MARKER = ".edgecnn-stage.json"

    def __init__(self, name: str, directory: Path, key: str, outputs: list[Path],
                 force: bool) -> None:
        self.name, self.directory, self.key, self.outputs = name, directory, key, outputs
        self.fresh = not force and self._recorded() == key and all(p.exists() for p in outputs)

    def _marker(self) -> Path:
        return self.directory / f".{self.name}{self.MARKER}"

    def _recorded(self) -> str | None:
        try:
            return json.loads(self._marker().read_text())["key"]
        except (OSError, ValueError, KeyError):
            return None

    def done(self) -> None:
        with atomic_write(self._marker()) as tmp:
            tmp.write_text(json.dumps({"key": self.key}))


def export_int8(model: str, *, data: str = "digits", checkpoint: Path | None = None,
                method: str = "qat", qat_epochs: int = 3, train_epochs: int | None = None,
                formats: tuple[str, ...] = FORMATS, max_drop: float = 1.0, io: str = "int8",
                input_size: int | None = None, out: Path | None = None, force: bool = False,
                onnx_activations: str | None = None, bench_runs: int = 100,
                show_progress: bool = True) -> Report:
    """Model -> fp32 reference -> QAT/PTQ -> fp32 and int8 ONNX/TFLite -> validate, bench.

    Every stage's outputs are reused when its inputs (model, options, data,
    checkpoint) hash the same as last time; `force` redoes everything. The
    returned Report is also written as report.json, report.md and a plot.
    """
    from edgecnn.export.tflite import IO_MODES
    from edgecnn.quant.qat import QATConfig
    from edgecnn.quant.run import quantize_checkpoint

    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise EdgecnnError(f"--formats {','.join(formats)}: supported are {', '.join(FORMATS)}")
    if io not in IO_MODES:
        raise EdgecnnError(f"--io must be one of {', '.join(IO_MODES)}, got {io!r}")
    out = Path(out or Path("artifacts") / model.replace(":", "_"))
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}

    def run_stage(stage: _Stage, fn) -> None:
        start = time.perf_counter()
        if not stage.fresh:
            fn()
            stage.done()
        stages[stage.name] = {"seconds": round(time.perf_counter() - start, 2),
                              "reused": stage.fresh}
        if show_progress:
            reused = " [dim](reused)[/dim]" if stage.fresh else ""
            console.print(f"[green]✓[/green] {stage.name}{reused} "
                          f"[dim]({stages[stage.name]['seconds']:.1f}s)[/dim]")

    # 1. the fp32 reference
    ckpt_dir = out / "checkpoint"
    if checkpoint is None:
        train_config = (DEFAULT_TRAIN if train_epochs is None
                        else TrainConfig(epochs=train_epochs, lr=DEFAULT_TRAIN.lr))
        key = _digest(model, data_digest(data), input_size, asdict(train_config))
        stage = _Stage("train", out, key, [ckpt_dir / "checkpoint.pt"], force)
        run_stage(stage, lambda: train_reference(model, data, ckpt_dir, train_config,
                                                 input_size=input_size,
                                                 show_progress=show_progress,
                                                 preflight="error", formats=formats, io=io))
    else:
        ckpt_dir = Path(checkpoint)
        load_checkpoint(ckpt_dir, model)  # fail early on a checkpoint that doesn't fit
    ckpt_key = _files_digest(ckpt_dir / "checkpoint.pt") + _files_digest(ckpt_dir / "config.json")
    config = read_config(ckpt_dir)

    # 2. quantization (QAT by default)
    quant_dir = out / "quantized"
    key = _digest(ckpt_key, data_digest(data), method, qat_epochs)
    stage = _Stage("quantize", out, key, [quant_dir / "model_int8.pt2"], force)
    run_stage(stage, lambda: quantize_checkpoint(
        ckpt_dir, quant_dir, method=method, data=data, model_name=model,
        qat_config=QATConfig(epochs=qat_epochs), show_progress=show_progress))
    quant_metrics = json.loads((quant_dir / "metrics.json").read_text())

    # 3. artifacts
    paths = {f"model_{p}.{f}": out / f"model_{p}.{f}" for f in formats for p in ("fp32", "int8")}
    key = _digest(ckpt_key, stage.key, formats, io, onnx_activations)
    stage = _Stage("export", out, key, list(paths.values()), force)
    run_stage(stage, lambda: _write_artifacts(ckpt_dir, quant_dir, out, formats, io,
                                              onnx_activations, model))
    with atomic_write(out / "preprocessing.json") as tmp:
        tmp.write_text(json.dumps(config.preprocessing.to_dict(), indent=2))

    # 4. validate against the fp32 reference, 5. bench
    from edgecnn.runtime.bench import BenchConfig, run_bench
    from edgecnn.runtime.validate import Bounds, run_validate

    start = time.perf_counter()
    ordered = list(paths.values())
    reference = ordered[0]
    seed = json.loads((ckpt_dir / "metrics.json").read_text()).get("train_config", {}).get(
        "seed", 0) if (ckpt_dir / "metrics.json").is_file() else 0
    validation = run_validate(reference, ordered[1:], data, Bounds(max_drop=max_drop,
                                                                   min_agreement=0.0), seed=seed)
    stages["validate"] = {"seconds": round(time.perf_counter() - start, 2)}
    if show_progress:
        console.print(f"[green]✓[/green] validate [dim]({stages['validate']['seconds']:.1f}s)"
                      "[/dim]")
    start = time.perf_counter()
    threads = tuple(sorted({1, os.cpu_count() or 1}))
    bench = run_bench(ordered, BenchConfig(threads=threads, runs=bench_runs), progress=False)
    stages["bench"] = {"seconds": round(time.perf_counter() - start, 2)}
    if show_progress:
        console.print(f"[green]✓[/green] bench [dim]({stages['bench']['seconds']:.1f}s)[/dim]")

    from edgecnn.verify.inspect import inspect_for_report  # where the int8 error comes from

    start = time.perf_counter()
    inspection = inspect_for_report(reference, ordered[1:], data, out, seed=seed)
    stages["inspect"] = {"seconds": round(time.perf_counter() - start, 2)}
    if show_progress:
        console.print(f"[green]✓[/green] inspect [dim]({stages['inspect']['seconds']:.1f}s)[/dim]")
    report = Report({**_report_data(model, data, method, max_drop, config, quant_metrics,
                                    validation, bench, stages, ordered), "inspect": inspection})
    report.write(out)
    return report


def _write_artifacts(ckpt_dir: Path, quant_dir: Path, out: Path, formats: tuple[str, ...],
                     io: str, onnx_activations: str | None, model: str) -> None:
    export_artifacts(ckpt_dir, out, model_name=model, formats=formats)
    export_artifacts(ckpt_dir, out, model_name=model, formats=formats, quantized=quant_dir,
                     io=io, activations=onnx_activations)


def _report_data(model: str, data: str, method: str, max_drop: float, config: ModelConfig,
                 quant_metrics: dict, validation: dict, bench: dict, stages: dict,
                 paths: list[Path]) -> dict:
    by_name = {c["name"]: c for c in validation["candidates"]}
    reference = validation["reference"]
    latency: dict[str, dict[str, float]] = {}
    for row in bench["results"]:
        latency.setdefault(row["name"], {})[str(row["threads"])] = row["p50_ms"]
    artifacts = []
    for path in paths:
        fmt, precision = path.suffix[1:], path.stem.split("_")[-1]
        entry = by_name.get(path.name, {**reference, "drop": 0.0, "agreement": 1.0,
                                         "passed": True})
        fp32_p50 = latency[f"model_fp32.{fmt}"]
        one = min(latency[path.name], key=int)
        artifacts.append({
            "name": path.name, "path": str(path), "format": fmt, "precision": precision,
            "size_bytes": path.stat().st_size, "accuracy": entry["accuracy"],
            "drop": entry["drop"], "agreement": entry["agreement"],
            "latency_ms_p50": latency[path.name],
            "speedup_vs_fp32": fp32_p50[one] / latency[path.name][one],
            "passed": precision == "fp32" or entry["drop"] <= max_drop,
        })
    return {
        "model": model, "data": data, "method": method, "max_drop": max_drop,
        "reference_accuracy": reference["accuracy"], "val_images": validation["num_images"],
        "torch_fp32_accuracy": quant_metrics["fp32_accuracy"],
        "torch_int8_accuracy": quant_metrics["int8_accuracy"],
        "preprocessing": config.preprocessing.to_dict(),
        "passed": all(a["passed"] for a in artifacts), "artifacts": artifacts,
        "stages": stages, "machine": bench["machine"], "edgecnn_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
