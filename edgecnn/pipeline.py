"""Stages that string the modules together; the CLI and the Python API call these."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edgecnn import __version__, distributed, progress
from edgecnn.checkpoint import ModelConfig, load_checkpoint, read_config, save_checkpoint
from edgecnn.data import load
from edgecnn.distributed import Execution
from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.fallback import check_fallback
from edgecnn.models import create_model
from edgecnn.progress import console
from edgecnn.quant.recipe import PTQ, QAT, Recipe
from edgecnn.report import Report, artifact_reports
from edgecnn.runtime.manifest import sha256_file
from edgecnn.runtime.tables import signed
from edgecnn.train import TrainConfig, model_options_for, preprocessing_for, train
from edgecnn.util import atomic_write, check_writable_dir, clean_stale_temps

if TYPE_CHECKING:
    from edgecnn.runtime.bench import BenchReport
    from edgecnn.runtime.validate import ValidationReport

FORMATS = ("onnx", "tflite")


@dataclass(frozen=True)
class Pretrained:
    """Start from pretrained weights: a .safetensors or tensors-only torch file, mapped
    onto the model by `edgecnn.models.pretrained` (name table, else layer order);
    `drop_background` drops the first row of a classifier with one class too many
    (TensorFlow's 1001-logit heads)."""

    weights: Path
    drop_background: bool = False


def train_reference(model_name: str, data: str, directory: Path,
                    config: TrainConfig | None = None, *, input_size: int | None = None,
                    width_mult: float = 1.0, show_progress: bool = True,
                    preflight: str | None = None, formats: tuple[str, ...] = FORMATS,
                    io: str = "int8", quant_config=None, pretrained: Pretrained | None = None,
                    model_options: dict | None = None, preprocess=None,
                    execution: Execution | None = None) -> dict:
    """Train the fp32 reference and write checkpoint.pt, config.json and metrics.json.

    preflight: "error" or "warn" first checks, on the untrained model, that it exports
    to int8 `formats` (`edgecnn.preflight`), and raises or warns before any epoch.
    quant_config: the QuantConfig the model will be quantized with; its layer patterns
    (`--keep-float`) must each match a layer, checked before any epoch (raises).
    pretrained: load these weights first; training then fine-tunes them (the
    classifier is the head of `TrainConfig`'s phases), and `config.epochs == 0` keeps
    them as they are (refused when the classifier had to be replaced).
    model_options: `padding` and `bn_eps` (recorded in config.json, as every option).
    Raises EdgecnnError before any training for a bad file, a tensor with no home, or
    options out of range.
    preprocess: `data.preprocessing.PreprocessOptions` (--mean/--std/--resize/...).
    execution: device and loader workers (`edgecnn.distributed`); under torchrun every
    rank trains (DistributedDataParallel) and rank 0 alone writes `directory`.
    """
    from edgecnn.checkpoint import check_options
    from edgecnn.models.pretrained import _classifier, load_pretrained_file, read_weights

    config = config or TrainConfig()
    extra = check_options(dict(model_options or {}))
    if pretrained is None and (config.epochs == 0 or config.freeze_epochs):
        raise EdgecnnError("epochs=0 and freeze_epochs need pretrained weights (a model "
                           "trained from scratch must train)")
    if pretrained is not None:
        read_weights(pretrained.weights)  # a bad file fails before the data loads
    dataset = load(data, seed=config.seed)
    preprocessing = preprocessing_for(dataset, input_size, preprocess)
    options = {**model_options_for(preprocessing, width_mult), **extra}
    torch.manual_seed(config.seed)  # weight init is part of the seeded run
    model = create_model(model_name, **options)
    if quant_config is not None:
        _check_patterns(model, preprocessing, quant_config)
    loaded = None
    if pretrained is not None:
        loaded = load_pretrained_file(model, pretrained.weights, model_name=model_name,
                                      drop_background=pretrained.drop_background)
        _follow_weights(model, options, "bn_eps" in extra, loaded)
        if show_progress and distributed.is_main():
            for line in loaded.summary():
                console.print(line, highlight=False, soft_wrap=True)
        if config.epochs == 0 and loaded.head == "replaced":
            raise EdgecnnError(f"epochs=0 uses the weights as they are, but {loaded.head_note}"
                               ": train at least one epoch")
    if preflight is not None:
        _preflight(model, preprocessing, formats, io, preflight, quant_config)
    metrics = train(model, dataset, preprocessing, config, show_progress=show_progress,
                    head=_classifier(model) if loaded is not None else None,
                    execution=execution)
    metrics = {"model": model_name, "data": data, **metrics}
    if distributed.world_size() > 1:
        metrics["processes"] = distributed.world_size()
    if not distributed.is_main():
        distributed.barrier()  # rank 0 writes; the others return once it has
        return metrics
    save_checkpoint(Path(directory), model, ModelConfig(model_name, preprocessing, options, data))
    if loaded is not None:
        metrics["pretrained"] = {"file": str(pretrained.weights), "sha256": loaded.sha256,
                                 "layout": loaded.layout, "classifier": loaded.head,
                                 "classifier_note": loaded.head_note}
        with atomic_write(Path(directory) / "pretrained.json") as tmp:
            tmp.write_text(json.dumps({"file": str(pretrained.weights), **loaded.to_dict()},
                                      indent=2))
    with atomic_write(Path(directory) / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    distributed.barrier()
    return metrics


def _follow_weights(model: torch.nn.Module, options: dict, eps_given: bool, loaded) -> None:
    """BatchNorm epsilon follows the pretrained layout's (set in place and in `options`,
    which config.json records) unless one was given; notes on `loaded` say so, and say
    when the model's padding is not the TF 'SAME' the weights were trained with."""
    from edgecnn.models.padding import set_batchnorm_eps

    source = f"the {loaded.layout} weights"
    eps = options.get("bn_eps", 1e-5)  # the zoo's default
    if loaded.bn_eps is not None and not eps_given and eps != loaded.bn_eps:
        set_batchnorm_eps(model, loaded.bn_eps)
        options["bn_eps"] = loaded.bn_eps
        loaded.notes.append(f"BatchNorm eps {loaded.bn_eps:g}, as {source} were trained")
    elif loaded.bn_eps is not None and eps != loaded.bn_eps:
        loaded.notes.append(f"{source} were trained with BatchNorm eps {loaded.bn_eps:g}; "
                            f"the model's {options['bn_eps']:g} kept, as given")
    if loaded.tf_padding and options.get("padding", "symmetric") != "tf_same":
        loaded.notes.append(f"{source} were trained with TensorFlow 'SAME' padding (bottom / "
                            "right on strided convolutions); the model pads symmetrically "
                            "(--padding tf-same reproduces them)")


class PreflightWarning(UserWarning):
    """The model trains, but its export to int8 would fail (named in the message)."""


def _check_patterns(model: torch.nn.Module, preprocessing, quant_config) -> None:
    """Every layer pattern of `quant_config` matches a layer of `model` (left unchanged)."""
    from edgecnn.quant.calibrate import check_patterns

    h, w = preprocessing.input_size
    check_patterns(model, torch.zeros(2, preprocessing.channels, h, w), quant_config)


def _preflight(model: torch.nn.Module, preprocessing, formats: tuple[str, ...], io: str,
               mode: str, quant_config=None) -> None:
    from edgecnn.preflight import check_exportable

    state = copy.deepcopy(model.state_dict())
    try:
        check_exportable(model, preprocessing, formats=formats, io=io, config=quant_config)
    except EdgecnnError as exc:
        if mode == "error":
            raise
        warnings.warn(f"{exc}; training anyway", PreflightWarning, stacklevel=3)
    finally:
        model.load_state_dict(state)  # the seeded initial weights, untouched


def check_formats(formats: tuple[str, ...]) -> None:
    """Raises ParameterError unless `formats` is a non-empty selection of FORMATS."""
    if not formats or set(formats) - set(FORMATS):
        raise ParameterError("formats", f"{','.join(formats)}: supported are "
                             f"{', '.join(FORMATS)}")


def export_artifacts(checkpoint: Path, out_dir: Path, *, model_name: str | None = None,
                     formats: tuple[str, ...] = ("onnx",), quantized: Path | None = None,
                     io: str = "int8", activations: str | None = None) -> list[Path]:
    """fp32 artifacts from a checkpoint, or with `quantized` (a quantized directory) int8
    ones, in `formats`: `model_{fp32,int8}.onnx` / `.tflite` in `out_dir`. The int8
    .onnx is the onnxruntime variant of the canonical QDQ model, the .tflite is
    converted from the canonical one (in memory: a TFLite-only export writes no ONNX)."""
    from edgecnn.export import onnx as onnx_export

    check_formats(formats)
    model, config = load_checkpoint(Path(checkpoint), model_name)
    out_dir = Path(out_dir)
    if quantized is None:
        precision, proto = "fp32", onnx_export.fp32_model(model, config.preprocessing,
                                                          model_name=config.model)
        shipped = proto
    else:
        from edgecnn import quant

        program, metadata = quant.load_program(Path(quantized))
        precision, proto = "int8", onnx_export.qdq_model(program, metadata.preprocessing,
                                                         model_name=config.model)
        shipped = onnx_export.onnxruntime_variant(
            proto, activations=activations or onnx_export.DEFAULT_ACTIVATIONS)
    stem = out_dir / f"model_{precision}"
    written = []
    if "onnx" in formats:
        written.append(onnx_export.save(shipped, stem.with_suffix(".onnx")))
    if "tflite" in formats:
        from edgecnn.export.tflite import convert

        written.append(convert(proto, stem.with_suffix(".tflite"),
                               io=io if quantized else "float"))
    return written


# --- `edgecnn export --int8`: model -> validated, benchmarked int8 artifacts ---------------

#: fp32 schedule used when no checkpoint is given: short, small-input mode on small images.
DEFAULT_TRAIN = TrainConfig(epochs=6, lr=3e-3)


def stage_key(*parts: object) -> str:
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
    """A pipeline step whose outputs are reused only when verified.

    The marker `.NAME.edgecnn-stage.json` records the stage's key (a hash of its
    inputs, including the content hashes of upstream outputs) and the sha256 of
    every output. It is removed before the stage runs and written last,
    atomically, after all outputs are; a stage is reused only when the key
    matches and every output still has the recorded hash. So a run killed
    mid-stage, or an output edited or replaced since, is redone, never mixed.
    """

    MARKER = ".edgecnn-stage.json"

    def __init__(self, name: str, directory: Path, key: str, outputs: list[Path],
                 force: bool) -> None:
        self.name, self.directory, self.key, self.outputs = name, directory, key, outputs
        self.fresh = not force and self._verified()

    def _marker(self) -> Path:
        return self.directory / f".{self.name}{self.MARKER}"

    def _verified(self) -> bool:
        try:
            recorded = json.loads(self._marker().read_text())
            if recorded["key"] != self.key:
                return False
            hashes = recorded["outputs"]
            return all(p.is_file() and hashes.get(str(p.relative_to(self.directory)))
                       == sha256_file(p) for p in self.outputs)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def start(self) -> None:
        self._marker().unlink(missing_ok=True)

    def done(self) -> None:
        missing = [p for p in self.outputs if not p.is_file()]
        if missing:
            raise EdgecnnError(f"stage {self.name} did not write {missing[0]}")
        outputs = {str(p.relative_to(self.directory)): sha256_file(p) for p in self.outputs}
        with atomic_write(self._marker()) as tmp:
            tmp.write_text(json.dumps({"key": self.key, "outputs": outputs}))


def chance_floor(chance: float, num_images: int) -> float:
    """The top-1 a working fp32 reference must reach: the majority-class rate plus 5
    points or three binomial standard errors of it, whichever is larger."""
    return chance + max(0.05, 3.0 * math.sqrt(chance * (1.0 - chance) / max(num_images, 1)))


def _check_arguments(model: str, data: str, checkpoint: Path | None, recipe: Recipe,
                     formats: tuple[str, ...], max_drop: float, min_agreement: float, io: str,
                     onnx_activations: str | None, out: Path) -> None:
    """Every argument of `export_int8`, checked before any work (training takes minutes)."""
    from edgecnn.data import check_spec
    from edgecnn.export.onnx import ACTIVATION_TYPES
    from edgecnn.export.tflite import IO_MODES
    from edgecnn.flags import check
    from edgecnn.models.registry import resolve_factory

    check_formats(formats)
    if io not in IO_MODES:
        raise ParameterError("io", f"must be one of {', '.join(IO_MODES)}, got {io!r}")
    if onnx_activations is not None and onnx_activations not in ACTIVATION_TYPES:
        raise ParameterError("onnx_activations", f"must be one of "
                             f"{', '.join(ACTIVATION_TYPES)}, got {onnx_activations!r}")
    if not isinstance(recipe, (PTQ, QAT)):
        raise ParameterError("recipe", f"must be PTQ(...) or QAT(...), got {recipe!r}"[:200])
    check("--max-drop", max_drop)
    check("--min-agreement", min_agreement)
    check_spec(data)
    resolve_factory(model)
    if checkpoint is not None and not Path(checkpoint).is_dir():
        raise ParameterError("checkpoint", f"directory not found: {checkpoint}")
    check_writable_dir(out, "--out")


def export_int8(model: str, *, data: str = "digits", checkpoint: Path | None = None,
                recipe: Recipe = QAT(), train_epochs: int | None = None,
                formats: tuple[str, ...] = FORMATS, max_drop: float = 1.0,
                min_agreement: float = 0.99, io: str = "int8",
                input_size: int | None = None, out: Path | None = None, force: bool = False,
                onnx_activations: str | None = None, bench_runs: int = 100,
                keep_float: tuple[str, ...] = (), fallback: str = "none",
                int16: tuple[str, ...] = (), show_progress: bool = True,
                pretrained: Pretrained | None = None, model_options: dict | None = None,
                train_config: TrainConfig | None = None,
                preprocess=None) -> Report:
    """Model -> fp32 reference -> QAT/PTQ -> fp32 and int8 ONNX/TFLite -> validate, bench.

    Every stage's outputs are reused when its inputs (model, options, data,
    checkpoint) hash the same as last time; `force` redoes everything. The
    returned Report is also written as report.json, report.md and a plot.
    keep_float: regular expressions over layer names kept float (`edgecnn.quant.precision`).
    int16: regular expressions over layer names moved to 16x8 (int16 activations).
    fallback: "int16" / "float" moves the layers adding most int8 error to int16 / float
    until every int8 artifact's drop is within `max_drop` (`edgecnn.fallback`); "none"
    only measures.
    recipe: `QAT(...)` (default) or `PTQ(...)` with its steps (`edgecnn.quant.recipe`);
    report.json's "ptq_methods" records what CLE and bias correction did.
    pretrained, model_options, preprocess: as `train_reference`; train_config
    replaces the default fp32 schedule (`train_epochs` then sets only its epochs;
    0 with `pretrained`: no fp32 training, straight to quantization).
    """
    from edgecnn.quant.run import quantize_checkpoint, training_seed
    from edgecnn.quant.spec import QuantConfig

    if distributed.world_size() > 1:
        raise EdgecnnError("the int8 pipeline (export --int8) runs in one process, not under "
                           "torchrun: train and quantize under torchrun (`edgecnn train`, "
                           "`edgecnn quantize`), then export, validate and bench in one")
    out = Path(out or Path("artifacts") / model.replace(":", "_"))
    _check_arguments(model, data, checkpoint, recipe, formats, max_drop, min_agreement, io,
                     onnx_activations, out)
    quant_config = QuantConfig(keep_float=tuple(keep_float), int16=tuple(int16))
    check_fallback(fallback)
    if checkpoint is not None and (pretrained is not None or model_options):
        raise EdgecnnError("checkpoint and pretrained / model_options exclude each other: a "
                           "checkpoint's config.json fixes its model")
    if pretrained is not None:
        from edgecnn.models.pretrained import read_weights

        read_weights(pretrained.weights)  # fail fast: before any stage
    clean_stale_temps(out, recursive=True)  # left by a run killed mid-write
    stages: dict[str, dict] = {}

    def run_stage(stage: _Stage, fn) -> None:
        with progress.stage(stage.name, show_progress, stages, reused=stage.fresh):
            if not stage.fresh:
                stage.start()
                fn()
                stage.done()

    # 1. the fp32 reference
    ckpt_dir = out / "checkpoint"
    if checkpoint is None:
        base = train_config or DEFAULT_TRAIN
        train_config = base if train_epochs is None else TrainConfig(
            **{**asdict(base), "epochs": train_epochs})
        weights = (None if pretrained is None else
                   [_files_digest(Path(pretrained.weights)), pretrained.drop_background])
        key = stage_key(model, data_digest(data), input_size, asdict(train_config),
                        weights, model_options or {},
                        *([asdict(preprocess)] if preprocess is not None else []))
        stage = _Stage("train", out, key, [ckpt_dir / "checkpoint.pt", ckpt_dir / "config.json",
                                            ckpt_dir / "metrics.json"], force)
        run_stage(stage, lambda: train_reference(model, data, ckpt_dir, train_config,
                                                 input_size=input_size,
                                                 show_progress=show_progress,
                                                 preflight="error", formats=formats, io=io,
                                                 quant_config=quant_config,
                                                 pretrained=pretrained,
                                                 model_options=model_options,
                                                 preprocess=preprocess))
    else:
        ckpt_dir = Path(checkpoint)
        loaded, loaded_config = load_checkpoint(ckpt_dir, model)  # fail early on a misfit
        _check_patterns(loaded, loaded_config.preprocessing, quant_config)
    ckpt_key = _files_digest(ckpt_dir / "checkpoint.pt") + _files_digest(ckpt_dir / "config.json")
    config = read_config(ckpt_dir)

    # 2. quantization (QAT by default), 3. artifacts: again per fallback step
    quant_dir = out / "quantized"
    paths = {f"model_{p}.{f}": out / f"model_{p}.{f}" for f in formats for p in ("fp32", "int8")}
    sidecars = [Path(f"{p}.json") for p in paths.values() if p.suffix == ".tflite"]

    def quantize_and_export(config) -> dict:
        key = stage_key(ckpt_key, data_digest(data), recipe.method, recipe.to_dict(),
                        config.to_dict())
        stage = _Stage("quantize", out, key, [quant_dir / "model_int8.pt2",
                                              quant_dir / "metrics.json"], force)
        run_stage(stage, lambda: quantize_checkpoint(
            ckpt_dir, quant_dir, recipe, data=data, model_name=model, config=config,
            show_progress=show_progress))
        key = stage_key(ckpt_key, _files_digest(quant_dir / "model_int8.pt2"), formats, io,
                        onnx_activations)
        stage = _Stage("export", out, key, list(paths.values()) + sidecars, force)
        run_stage(stage, lambda: _write_artifacts(ckpt_dir, quant_dir, out, formats, io,
                                                  onnx_activations, model))
        return json.loads((quant_dir / "metrics.json").read_text())

    quant_metrics = quantize_and_export(quant_config)
    with atomic_write(out / "preprocessing.json") as tmp:
        tmp.write_text(json.dumps(config.preprocessing.to_dict(), indent=2))

    # 4. validate against the fp32 reference (and fall back layer by layer), 5. bench
    from edgecnn.runtime.bench import BenchConfig, run_bench
    from edgecnn.runtime.validate import Bounds, run_validate

    ordered = list(paths.values())
    reference = ordered[0]
    seed = training_seed(ckpt_dir)
    bounds = Bounds(max_drop=max_drop, min_agreement=min_agreement)
    with progress.stage("validate", show_progress, stages):
        validation = run_validate(reference, ordered[1:], data, bounds, seed=seed)
    fallback_record = None
    if fallback != "none":
        with progress.stage("fallback", False, stages):  # its steps print their own lines
            quant_metrics, validation, fallback_record = _fall_back(
                fallback, quant_config, quant_metrics, validation, quantize_and_export,
                lambda: run_validate(reference, ordered[1:], data, bounds, seed=seed),
                reference, ordered, data, seed, max_drop, bench_runs, io, show_progress)
    threads = tuple(sorted({1, os.cpu_count() or 1}))
    with progress.stage("bench", show_progress, stages):
        bench = run_bench(ordered, BenchConfig(threads=threads, runs=bench_runs), progress=False)

    from edgecnn.verify.inspect import inspect_for_report  # where the int8 error comes from

    with progress.stage("inspect", show_progress, stages):
        inspection = inspect_for_report(reference, ordered[1:], data, out, seed=seed)
    manifest_files = [*ordered, *sidecars, quant_dir / "model_int8.pt2",
                      ckpt_dir / "checkpoint.pt", out / "preprocessing.json"]
    report = Report({**_report_data(model, data, recipe.method, max_drop, config, quant_metrics,
                                    validation, bench, stages, ordered, manifest_files),
                     "inspect": inspection, "fallback": fallback_record})
    report.write(out)
    return report


def _int8_drops(validation: ValidationReport) -> dict[str, float]:
    """{file name: top-1 drop} of the int8 candidates (precision from their metadata)."""
    return {c.name: c.drop for c in validation.candidates if c.precision == "int8"}


def _int8_latency(validation: ValidationReport, runs: int) -> dict[str, float]:
    """{file name: p50 ms at 1 thread} of the int8 candidates."""
    from edgecnn.runtime.bench import BenchConfig, run_bench

    int8 = [Path(c.artifact) for c in validation.candidates if c.precision == "int8"]
    bench = run_bench(int8, BenchConfig(threads=(1,), runs=runs), progress=False)
    return {row.name: row.p50_ms for row in bench.results}


def _fall_back(mode: str, quant_config, quant_metrics: dict, validation: ValidationReport,
               quantize_and_export, validate, reference: Path, paths: list[Path], data: str,
               seed: int, max_drop: float, bench_runs: int, io: str, show_progress: bool,
               ) -> tuple[dict, ValidationReport, dict | None]:
    """The accuracy-aware loop of `edgecnn.fallback`: returns the last step's quantize
    metrics and validation, and the "fallback" record (None when step 0 is within)."""
    from dataclasses import replace

    from edgecnn.fallback import Step, patterns, rank_groups, rank_layers, run_steps, summary

    steps = [Step([], quant_metrics.get("float_layers", []), _int8_drops(validation),
                  int16_layers=_int16_names(quant_metrics))]
    if steps[0].within(max_drop):
        return quant_metrics, validation, summary(mode, max_drop, None, steps)
    steps[0].p50_ms = _int8_latency(validation, bench_runs)
    try:
        ranking = rank_layers(reference, paths[1:], data, seed)
    except EdgecnnError as exc:  # nothing to rank by: say so, keep the int8 files
        warnings.warn(f"--fallback {mode}: cannot rank the layers ({exc}); nothing moved",
                      stacklevel=2)
        return quant_metrics, validation, {**summary(mode, max_drop, None, steps),
                                           "error": str(exc)}
    field = "int16" if mode == "int16" else "keep_float"

    def attempt(layers: list[str]):
        config = replace(quant_config, **{field: getattr(quant_config, field) + patterns(layers)})
        metrics = quantize_and_export(config)
        checked = validate()
        step = Step([], metrics.get("float_layers", []), _int8_drops(checked),
                    _int8_latency(checked, bench_runs), _int16_names(metrics))
        return step, (metrics, checked)

    def on_step(index: int, step: Step) -> None:
        if show_progress:
            drops = ", ".join(f"{n} {signed(d)}" for n, d in step.drops.items())
            verdict = " (worse: reverted)" if step.reverted else ""
            console.print(f"[green]✓[/green] fallback step {index}: {', '.join(step.moved)} to "
                          f"{mode}: drop {drops}{verdict}", highlight=False)

    movable = quant_metrics.get("int8_layers", [])
    if mode == "int16":  # a pool / add / mean between int16 layers keeps their tensors int16
        movable = movable + quant_metrics.get("int16_capable_ops", [])
    groups = rank_groups(ranking, movable, float_input=io == "float")
    steps, kept = run_steps(steps[0], groups, attempt, max_drop, on_step)
    if kept is not None:
        quant_metrics, validation = kept
    return quant_metrics, validation, summary(mode, max_drop, ranking, steps)


def _int16_names(metrics: dict) -> list[str]:
    """The int16 layers (module paths) and ops (node names) of a quantize run: the names
    `--fallback int16` moves."""
    return [*metrics.get("int16_layers", []), *metrics.get("int16_ops", [])]


def manifest(files: list[Path], root: Path) -> dict[str, dict]:
    """{path relative to `root`: {"sha256", "size_bytes"}} of every file (report.json's
    "manifest"; `validate` and `bench` check files against it with --manifest)."""
    entries = {}
    for file in files:
        file = Path(file)
        try:
            name = str(file.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            name = str(file)
        entries[name] = {"sha256": sha256_file(file), "size_bytes": file.stat().st_size}
    return entries


def _write_artifacts(ckpt_dir: Path, quant_dir: Path, out: Path, formats: tuple[str, ...],
                     io: str, onnx_activations: str | None, model: str) -> None:
    export_artifacts(ckpt_dir, out, model_name=model, formats=formats)
    export_artifacts(ckpt_dir, out, model_name=model, formats=formats, quantized=quant_dir,
                     io=io, activations=onnx_activations)


def _report_data(model: str, data: str, method: str, max_drop: float, config: ModelConfig,
                 quant_metrics: dict, validation: ValidationReport, bench: BenchReport,
                 stages: dict, paths: list[Path], manifest_files: list[Path]) -> dict:
    reference = validation.reference
    artifacts = artifact_reports(validation, bench)
    failures = [f for c in validation.candidates for f in c.failures]
    floor = chance_floor(validation.chance, validation.num_images)
    if reference.accuracy < floor:
        failures.insert(0, f"the fp32 reference {reference.name} itself is broken: top-1 "
                           f"{100 * reference.accuracy:.2f}% does not beat chance "
                           f"({100 * validation.chance:.2f}%, the majority class) by the "
                           f"required margin (floor {100 * floor:.2f}%)")
    return {
        "model": model, "data": data, "method": method, "max_drop": max_drop,
        "reference_accuracy": reference.accuracy, "val_images": validation.num_images,
        "torch_fp32_accuracy": quant_metrics["fp32_accuracy"],
        "torch_int8_accuracy": quant_metrics["int8_accuracy"],
        "float_layers": quant_metrics.get("float_layers", []),
        "int16_layers": quant_metrics.get("int16_layers", []),
        "int16_ops": quant_metrics.get("int16_ops", []),
        "float_islands": quant_metrics.get("float_islands", []),
        "ptq_methods": quant_metrics.get("ptq_methods", {}),
        "preprocessing": config.preprocessing.to_dict(),
        "min_agreement": validation.bounds.min_agreement,
        "reference_floor": floor, "failures": failures,
        "passed": not failures and all(a.passed for a in artifacts),
        "artifacts": [a.to_dict() for a in artifacts],
        "manifest": manifest(manifest_files, root=paths[0].parent),
        "stages": stages, "machine": bench.machine, "edgecnn_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
