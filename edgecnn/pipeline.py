"""`edgecnn export --int8`: the stages composed and cached.

The stages are functions with a typed config and a typed result, each in its own
module: `reference.train_reference` (`Training` -> `TrainResult`),
`quant.run.quantize_checkpoint` (`PTQ` | `QAT` -> `QuantizeResult`),
`artifacts.export_artifacts` (`ArtifactConfig` -> files),
`runtime.validate.run_validate` (`Bounds` -> `ValidationReport`),
`runtime.bench.run_bench` (`BenchConfig` -> `BenchReport`) and
`verify.inspect.inspect_for_report`. This module only runs them in order, reuses a
stage whose inputs hash the same as last time, and writes the report.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgecnn import __version__, distributed, progress
from edgecnn.artifacts import ArtifactConfig, export_artifacts
from edgecnn.checkpoint import ModelConfig, load_checkpoint, read_config
from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.fallback import check_fallback
from edgecnn.preflight import check_interface
from edgecnn.progress import console
from edgecnn.quant.recipe import PTQ, QAT, Recipe
from edgecnn.quant.run import QuantizeResult
from edgecnn.quant.spec import QuantConfig
from edgecnn.reference import Training, check_patterns, train_reference
from edgecnn.report import Report, artifact_reports
from edgecnn.runtime.manifest import sha256_file
from edgecnn.runtime.tables import signed
from edgecnn.runtime.validate import Bounds
from edgecnn.train import TrainConfig
from edgecnn.util import atomic_write, check_writable_dir, clean_stale_temps

if TYPE_CHECKING:
    from edgecnn.runtime.bench import BenchReport
    from edgecnn.runtime.validate import ValidationReport

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


def _check_arguments(model: str, data: str, reference: Training | Path, recipe: Recipe,
                     quant: QuantConfig, artifacts: ArtifactConfig, bounds: Bounds,
                     fallback: str, bench_runs: int, out: Path) -> None:
    """What the typed configs do not check themselves, before any work (training takes
    minutes). Raises ParameterError naming the argument."""
    from edgecnn.data import check_spec
    from edgecnn.models.registry import resolve_factory

    for name, value, kind in (("recipe", recipe, (PTQ, QAT)), ("quant", quant, QuantConfig),
                              ("artifacts", artifacts, ArtifactConfig),
                              ("bounds", bounds, Bounds),
                              ("reference", reference, (Training, Path, str))):
        if not isinstance(value, kind):
            expected = ("PTQ(...) or QAT(...)" if name == "recipe" else
                        "Training(...) or a checkpoint directory" if name == "reference"
                        else f"{kind.__name__}(...)")
            raise ParameterError(name, f"must be {expected}, got {value!r}"[:200])
    check_fallback(fallback)
    check_spec(data)
    resolve_factory(model)
    if isinstance(reference, Training):
        if reference.pretrained is not None:
            from edgecnn.models.pretrained import read_weights

            read_weights(reference.pretrained.weights)
    elif not Path(reference).is_dir():
        problem = ("is a file, not a checkpoint directory" if Path(reference).exists()
                   else "checkpoint directory not found")
        raise ParameterError("reference", f"{reference}: {problem}", flag="--checkpoint")
    if isinstance(bench_runs, bool) or not isinstance(bench_runs, int) or bench_runs < 1:
        raise ParameterError("bench_runs", f"must be a positive integer, got {bench_runs!r}")
    check_writable_dir(out, "out")


def export_int8(model: str, *, data: str = "digits",
                reference: Training | Path = Training(DEFAULT_TRAIN),
                recipe: Recipe = QAT(), quant: QuantConfig = QuantConfig(),
                artifacts: ArtifactConfig = ArtifactConfig(), bounds: Bounds = Bounds(),
                fallback: str = "none", bench_runs: int = 100, out: Path | None = None,
                force: bool = False, show_progress: bool = True) -> Report:
    """Model -> fp32 reference -> QAT/PTQ -> fp32 and int8 ONNX/TFLite -> validate, bench,
    inspect -> report.json, report.md and a plot in `out` (default artifacts/MODEL).

    reference: how to train the fp32 reference (`reference.Training`; the default is
        `DEFAULT_TRAIN`, a short small-input schedule; a schedule of 0 epochs with
        pretrained weights uses them as they are), or the directory of a trained
        checkpoint (from `edgecnn train`).
    recipe: `QAT(...)` (default) or `PTQ(...)` with its steps (`edgecnn.quant.recipe`);
        report.json's "ptq_methods" records what CLE and bias correction did.
    quant: what the quantizer emits, with `keep_float` / `int16` layer patterns
        (`edgecnn.quant.precision`).
    artifacts: the formats and the int8 files' input / output types.
    bounds: the gate, `max_drop` (points) and `min_agreement` (fraction).
    fallback: "int16" / "float" moves the layers adding most int8 error to int16 / float
        until every int8 artifact's drop is within `bounds.max_drop`
        (`edgecnn.fallback`); "none" only measures.
    bench_runs: timed runs per artifact and thread count (1 and all cores).
    Every stage's outputs are reused when its inputs (model, configs, data, upstream
    files) hash the same as last time; `force` redoes everything. Raises EdgecnnError
    (ParameterError naming the argument) before any stage for a bad argument.
    """
    from edgecnn.quant.run import quantize_checkpoint, training_seed

    if distributed.world_size() > 1:
        raise EdgecnnError("the int8 pipeline (export --int8) runs in one process, not under "
                           "torchrun: train and quantize under torchrun (`edgecnn train`, "
                           "`edgecnn quantize`), then export, validate and bench in one")
    out = Path(out or Path("artifacts") / model.replace(":", "_"))
    _check_arguments(model, data, reference, recipe, quant, artifacts, bounds, fallback,
                     bench_runs, out)
    clean_stale_temps(out, recursive=True)  # left by a run killed mid-write
    stages: dict[str, dict] = {}

    def run_stage(stage: _Stage, fn) -> None:
        with progress.stage(stage.name, show_progress, stages, reused=stage.fresh):
            if not stage.fresh:
                stage.start()
                fn()
                stage.done()

    # 1. the fp32 reference
    if isinstance(reference, Training):
        ckpt_dir = out / "checkpoint"
        key = stage_key(model, data_digest(data), reference.input_size,
                        asdict(reference.schedule),
                        None if reference.pretrained is None else
                        [_files_digest(Path(reference.pretrained.weights)),
                         reference.pretrained.drop_background],
                        reference.model_options, reference.width_mult,
                        *([asdict(reference.preprocess)] if reference.preprocess else []))
        stage = _Stage("train", out, key, [ckpt_dir / "checkpoint.pt", ckpt_dir / "config.json",
                                            ckpt_dir / "metrics.json"], force)
        run_stage(stage, lambda: train_reference(model, data, ckpt_dir, reference,
                                                 show_progress=show_progress,
                                                 preflight="error", artifacts=artifacts,
                                                 quant_config=quant,
                                                 qat=isinstance(recipe, QAT)))
    else:
        ckpt_dir = Path(reference)
        loaded, loaded_config = load_checkpoint(ckpt_dir, model)  # fail early on a misfit
        check_interface(loaded, loaded_config.preprocessing, model, str(ckpt_dir / "config.json"))
        check_patterns(loaded, loaded_config.preprocessing, quant)
    ckpt_key = _files_digest(ckpt_dir / "checkpoint.pt") + _files_digest(ckpt_dir / "config.json")
    config = read_config(ckpt_dir)

    # 2. quantization (QAT by default), 3. artifacts: again per fallback step
    quant_dir = out / "quantized"
    paths = artifacts.paths(out, "fp32") + artifacts.paths(out, "int8")
    sidecars = [Path(f"{p}.json") for p in paths if p.suffix == ".tflite"]

    def quantize_and_export(quant: QuantConfig) -> QuantizeResult:
        key = stage_key(ckpt_key, data_digest(data), recipe.method, recipe.to_dict(),
                        quant.to_dict())
        stage = _Stage("quantize", out, key, [quant_dir / "model_int8.pt2",
                                              quant_dir / "metrics.json"], force)
        run_stage(stage, lambda: quantize_checkpoint(
            ckpt_dir, quant_dir, recipe, data=data, model_name=model, config=quant,
            show_progress=show_progress))
        key = stage_key(ckpt_key, _files_digest(quant_dir / "model_int8.pt2"),
                        artifacts.formats, artifacts.io, artifacts.onnx_activations)
        stage = _Stage("export", out, key, paths + sidecars, force)
        run_stage(stage, lambda: [
            export_artifacts(ckpt_dir, out, artifacts, model_name=model),
            export_artifacts(ckpt_dir, out, artifacts, model_name=model, quantized=quant_dir)])
        return QuantizeResult.from_dict(json.loads((quant_dir / "metrics.json").read_text()))

    quantized = quantize_and_export(quant)
    with atomic_write(out / "preprocessing.json") as tmp:
        tmp.write_text(json.dumps(config.preprocessing.to_dict(), indent=2))

    # 4. validate against the fp32 reference (and fall back layer by layer), 5. bench
    from edgecnn.runtime.bench import BenchConfig, run_bench
    from edgecnn.runtime.validate import run_validate

    reference_file, candidates = paths[0], paths[1:]
    seed = training_seed(ckpt_dir)

    def validate() -> ValidationReport:
        return run_validate(reference_file, candidates, data, bounds, seed=seed)

    with progress.stage("validate", show_progress, stages):
        validation = validate()
    fallback_record = None
    if fallback != "none":
        with progress.stage("fallback", False, stages):  # its steps print their own lines
            quantized, validation, fallback_record = _fall_back(
                _Fallback(fallback, quant, quantize_and_export, validate, reference_file,
                          candidates, data, seed, bounds.max_drop, bench_runs, artifacts.io,
                          show_progress), quantized, validation)
    threads = tuple(sorted({1, os.cpu_count() or 1}))
    with progress.stage("bench", show_progress, stages):
        bench = run_bench(paths, BenchConfig(threads=threads, runs=bench_runs), progress=False)

    from edgecnn.verify.inspect import inspect_for_report  # where the int8 error comes from

    with progress.stage("inspect", show_progress, stages):
        inspection = inspect_for_report(reference_file, candidates, data, out, seed=seed)
    manifest_files = [*paths, *sidecars, quant_dir / "model_int8.pt2",
                      ckpt_dir / "checkpoint.pt", out / "preprocessing.json"]
    report = Report({**_report_data(model, data, recipe.method, bounds.max_drop, config,
                                    quantized, validation, bench, stages, paths,
                                    manifest_files),
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


@dataclass(frozen=True)
class _Fallback:
    """What the accuracy-aware loop needs from the pipeline: the mode, the starting
    QuantConfig, the stages to re-run per step and the files to rank layers on."""

    mode: str
    quant: QuantConfig
    quantize_and_export: Callable[[QuantConfig], QuantizeResult]
    validate: Callable[[], ValidationReport]
    reference: Path
    candidates: list[Path]
    data: str
    seed: int
    max_drop: float
    bench_runs: int
    io: str
    show_progress: bool


def _fall_back(run: _Fallback, quantized: QuantizeResult, validation: ValidationReport,
               ) -> tuple[QuantizeResult, ValidationReport, dict | None]:
    """The accuracy-aware loop of `edgecnn.fallback`: returns the kept step's quantize
    result and validation, and the "fallback" record (None when step 0 is within)."""
    from edgecnn.fallback import Step, patterns, rank_groups, rank_layers, run_steps, summary

    steps = [Step([], quantized.float_layers, _int8_drops(validation),
                  int16_layers=quantized.int16_names)]
    if steps[0].within(run.max_drop):
        return quantized, validation, summary(run.mode, run.max_drop, None, steps)
    steps[0].p50_ms = _int8_latency(validation, run.bench_runs)
    try:
        ranking = rank_layers(run.reference, run.candidates, run.data, run.seed)
    except EdgecnnError as exc:  # nothing to rank by: say so, keep the int8 files
        warnings.warn(f"fallback {run.mode}: cannot rank the layers ({exc}); nothing moved",
                      stacklevel=2)
        return quantized, validation, {**summary(run.mode, run.max_drop, None, steps),
                                       "error": str(exc)}
    field = "int16" if run.mode == "int16" else "keep_float"

    def attempt(layers: list[str]):
        config = replace(run.quant, **{field: getattr(run.quant, field) + patterns(layers)})
        result = run.quantize_and_export(config)
        checked = run.validate()
        step = Step([], result.float_layers, _int8_drops(checked),
                    _int8_latency(checked, run.bench_runs), result.int16_names)
        return step, (result, checked)

    def on_step(index: int, step: Step) -> None:
        if run.show_progress:
            drops = ", ".join(f"{n} {signed(d)}" for n, d in step.drops.items())
            verdict = " (worse: reverted)" if step.reverted else ""
            console.print(f"[green]✓[/green] fallback step {index}: {', '.join(step.moved)} to "
                          f"{run.mode}: drop {drops}{verdict}", highlight=False)

    movable = quantized.int8_layers
    if run.mode == "int16":  # a pool / add / mean between int16 layers keeps their tensors int16
        movable = movable + quantized.int16_capable_ops
    groups = rank_groups(ranking, movable, float_input=run.io == "float")
    steps, kept = run_steps(steps[0], groups, attempt, run.max_drop, on_step)
    if kept is not None:
        quantized, validation = kept
    return quantized, validation, summary(run.mode, run.max_drop, ranking, steps)


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


def _report_data(model: str, data: str, method: str, max_drop: float, config: ModelConfig,
                 quantized: QuantizeResult, validation: ValidationReport, bench: BenchReport,
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
        "torch_fp32_accuracy": quantized.fp32_accuracy,
        "torch_int8_accuracy": quantized.int8_accuracy,
        "float_layers": quantized.float_layers,
        "int16_layers": quantized.int16_layers,
        "int16_ops": quantized.int16_ops,
        "float_islands": quantized.float_islands,
        "ptq_methods": quantized.ptq_methods or {},
        "preprocessing": config.preprocessing.to_dict(),
        "min_agreement": validation.bounds.min_agreement,
        "reference_floor": floor, "failures": failures,
        "passed": not failures and all(a.passed for a in artifacts),
        "artifacts": [a.to_dict() for a in artifacts],
        "manifest": manifest(manifest_files, root=paths[0].parent),
        "stages": stages, "machine": bench.machine, "edgecnn_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
