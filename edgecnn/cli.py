"""The `edgecnn` command. Thin: parse flags, call the modules, print.

Commands that run on devices (`bench`, `validate`, `inspect`) must not import torch, so
every torch-using module is imported inside its command.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgecnn import __version__
from edgecnn.errors import EdgecnnError
from edgecnn.flags import check_all
from edgecnn.util import require_file

if TYPE_CHECKING:
    from edgecnn.runtime.validate import ValidationReport

app = typer.Typer(
    name="edgecnn",
    help="Mobile CNNs from PyTorch to int8 ONNX and TFLite, with accuracy and latency measured.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()

GATE_HELP = ("What is held against the bounds: point (the measured drop and agreement) | "
             "confident-pass (the 95% CI's pessimistic ends: pass only when the sample shows "
             "the candidate is within) | confident-fail (the optimistic ends: fail only when "
             "it shows it is outside).")


MEAN_HELP = ("Per-channel mean on the 0..1 scale, comma-separated (e.g. 0.485,0.456,0.406); "
             "with --std. Default: ImageNet's for 3-channel models of 96 px or more, else "
             "the training set's own.")
STD_HELP = "Per-channel std on the 0..1 scale, comma-separated; with --mean."
RESIZE_HELP = ("shorter (shorter side to --resize-size, then the centre crop) | whole (the "
               "whole image to the input size). Default: shorter for images larger than "
               "a 96-px-or-more input, else whole.")
RESIZE_SIZE_HELP = "With --resize shorter: the shorter side's length. Default: input / 0.875."


def preprocess_options(mean: str | None, std: str | None, resize: str | None,
                       resize_size: int | None, interpolation: str):
    """The preprocessing flags as `PreprocessOptions`; None when all are at their defaults
    (the stage keys of `export --int8` then stay those of earlier runs)."""
    from edgecnn.data.preprocessing import PreprocessOptions, parse_floats
    from edgecnn.flags import check

    check("resize_size", resize_size)
    options = PreprocessOptions(mean=parse_floats(mean, "--mean"),
                                std=parse_floats(std, "--std"), resize=resize,
                                resize_size=resize_size, interpolation=interpolation)
    return None if options == PreprocessOptions() else options


def _version(value: bool) -> None:
    if value:
        print(f"edgecnn {__version__}")
        raise typer.Exit()


#: third-party loggers that print import-time noise on every call (torchao's optional CUDA
#: kernels it cannot load, torch's pytree deprecation of torchao's enum registration)
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def _quiet(verbose: bool) -> None:
    """Silence the known third-party import noise unless --verbose (must run before the
    commands import torch / torchao)."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show third-party warnings and "
                                          "log lines that are hidden by default.")] = False,
) -> None:
    """edgecnn: train, quantize, export, benchmark and validate mobile CNNs."""
    _quiet(verbose)


#: `--padding` values -> the model option (`edgecnn.models.padding.PADDINGS`)
PADDING_FLAGS = {"symmetric": "symmetric", "tf-same": "tf_same"}
PRETRAINED_HELP = ("Start from these weights: .safetensors or a tensors-only torch file "
                   "(torchvision / timm / TF-ported names, else matched by layer order).")

# a new model's preprocessing record, as `train` and `export --int8` both take it
Mean = Annotated[str | None, typer.Option(help=MEAN_HELP)]
Std = Annotated[str | None, typer.Option(help=STD_HELP)]
Resize = Annotated[str | None, typer.Option(help=RESIZE_HELP)]
ResizeSize = Annotated[int | None, typer.Option(help=RESIZE_SIZE_HELP)]
Interpolation = Annotated[str, typer.Option(help="Resampling filter (Pillow's, antialiased): "
                                                 "bilinear | bicubic.")]

# the model's starting point, as `train` and `export --int8` both take it
DropBackground = Annotated[bool, typer.Option(
    "--drop-background", help="Drop row 0 of a 1001-logit TF classifier.")]
Padding = Annotated[str, typer.Option(help="symmetric | tf-same (TensorFlow 'SAME', for "
                                           "TF-trained weights).")]
BnEps = Annotated[float | None, typer.Option(
    help="BatchNorm epsilon.", show_default="1e-3 with --padding tf-same, else 1e-5")]
FreezeEpochs = Annotated[int, typer.Option(help="With --pretrained: the first N fp32 epochs "
                                                "train the classifier only.")]
BackboneLrFactor = Annotated[float, typer.Option(
    help="With --pretrained: the backbone's learning rate is the fp32 --lr times this.")]

# how training executes (edgecnn.distributed), as `train` and `quantize` both take it
Device = Annotated[str, typer.Option(help="auto | cpu | cuda: where training runs (auto: "
                                          "CUDA when torch sees it). Under torchrun: "
                                          "DistributedDataParallel, one GPU per process "
                                          "(nccl) or gloo on the CPU.")]
Workers = Annotated[int | None, typer.Option(
    help="DataLoader worker processes that decode and augment, per training process (0: in "
         "the process).", show_default="0 for in-memory data, else half the cores, at most 4")]


def _execution(device: str, workers: int | None):
    """The `Execution` of --device / --workers (it checks both), before any work."""
    from edgecnn.distributed import Execution, resolve_device

    execution = Execution(device=device, workers=workers)
    resolve_device(device)  # --device cuda without CUDA fails here, not after loading data
    return execution


def _starting_point(pretrained: Path | None, drop_background: bool, padding: str,
                    bn_eps: float | None, epochs: int | None, freeze_epochs: int):
    """(Pretrained | None, model options) from the flags, checked first."""
    from edgecnn.reference import Pretrained

    if padding not in PADDING_FLAGS:
        raise EdgecnnError(f"--padding must be one of {', '.join(PADDING_FLAGS)}, "
                           f"got {padding!r}")
    check_all(bn_eps=bn_eps, freeze_epochs=freeze_epochs)
    if pretrained is None:
        for flag, used in (("--drop-background", drop_background),
                           ("--freeze-epochs", freeze_epochs), ("--epochs 0", epochs == 0)):
            if used:
                raise EdgecnnError(f"{flag} needs --pretrained FILE")
    else:
        try:
            require_file(pretrained)
        except EdgecnnError as exc:
            raise EdgecnnError(f"--pretrained {exc}") from None
    if epochs is not None and freeze_epochs > epochs:
        raise EdgecnnError(f"--freeze-epochs {freeze_epochs} is more than --epochs {epochs}")
    options: dict = {}
    if padding != "symmetric":
        options["padding"] = PADDING_FLAGS[padding]
    if bn_eps is not None or padding == "tf-same":  # TF-trained weights: epsilon 1e-3
        options["bn_eps"] = 1e-3 if bn_eps is None else bn_eps
    weights = None if pretrained is None else Pretrained(pretrained, drop_background)
    return weights, options


@app.command("models")
def models_command(
    input_size: Annotated[int, typer.Option(help="Square input size for the MAC count.")] = 224,
    num_classes: Annotated[int, typer.Option(help="Classifier outputs.")] = 1000,
    in_channels: Annotated[int, typer.Option(help="Input channels.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List the model zoo with parameters and MACs at an input size."""
    check_all(input_size=input_size, num_classes=num_classes, in_channels=in_channels)
    from edgecnn.models import models
    from edgecnn.models.stats import model_stats

    rows = [model_stats(name, input_size=input_size, num_classes=num_classes,
                        in_channels=in_channels) for name in models]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"edgecnn models at {input_size}x{input_size}, {num_classes} classes")
    for column in ("name", "params", "MACs", "input mode"):
        table.add_column(column, justify="left" if column in ("name", "input mode") else "right")
    for row in rows:
        table.add_row(row["name"], f"{row['params']:,}", f"{row['macs'] / 1e6:,.1f}M",
                      "small-input" if row["small_input"] else "224-px")
    out.print(table)


@app.command("train")
def train_command(
    model: Annotated[str, typer.Argument(help="Zoo name or package.module:factory.")],
    data: Annotated[str, typer.Option(help="digits | mnist:DIR | cifar10:DIR | "
                                           "imagefolder:DIR | npz:FILE")] = "digits",
    mean: Mean = None,
    std: Std = None,
    resize: Resize = None,
    resize_size: ResizeSize = None,
    interpolation: Interpolation = "bilinear",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output directory "
                                                    "(default: checkpoints/MODEL).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for init, shuffling and the data split.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 2e-3,
    optimizer: Annotated[str, typer.Option(help="adamw | sgd (momentum 0.9).")] = "adamw",
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = 0.0,
    input_size: Annotated[int | None, typer.Option(help="Square input size "
                                                      "(default: 32 for images up to 64 px, "
                                                      "else 224).")] = None,
    width_mult: Annotated[float, typer.Option(help="Channel width multiplier.")] = 1.0,
    pretrained: Annotated[Path | None, typer.Option(help=PRETRAINED_HELP)] = None,
    drop_background: DropBackground = False,
    padding: Padding = "symmetric",
    bn_eps: BnEps = None,
    freeze_epochs: FreezeEpochs = 0,
    backbone_lr_factor: BackboneLrFactor = 0.1,
    device: Device = "auto",
    workers: Workers = None,
) -> None:
    """Train the fp32 reference model; writes checkpoint.pt, config.json, metrics.json.
    With --pretrained, fine-tunes those weights (a new classifier when the class count
    differs; --epochs 0 keeps them as they are). Under torchrun: every process trains
    its share of each --batch-size batch (DistributedDataParallel), rank 0 writes."""
    check_all(epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
              label_smoothing=label_smoothing, input_size=input_size, width_mult=width_mult,
              backbone_lr_factor=backbone_lr_factor)
    preprocess = preprocess_options(mean, std, resize, resize_size, interpolation)
    from edgecnn.data import check_spec
    from edgecnn.reference import Training, train_reference
    from edgecnn.train import TrainConfig
    from edgecnn.util import check_writable_dir

    check_spec(data)
    execution = _execution(device, workers)
    weights, options = _starting_point(pretrained, drop_background, padding, bn_eps, epochs,
                                       freeze_epochs)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         label_smoothing=label_smoothing, seed=seed,
                         freeze_epochs=freeze_epochs, backbone_lr_factor=backbone_lr_factor)
    directory = out_dir or Path("checkpoints") / model.replace(":", "_")
    check_writable_dir(directory, "out")  # before the training run, not after it
    result = train_reference(model, data, directory,
                             Training(config, input_size=input_size, width_mult=width_mult,
                                      pretrained=weights, model_options=options,
                                      preprocess=preprocess),
                             preflight="warn", execution=execution)
    out.print(f"{model} on {data}: val_accuracy [bold]{result.val_accuracy:.4f}[/bold] "
              f"in {result.train_seconds:.1f}s -> {directory}")


@app.command("bench")
def bench_command(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifacts (.onnx, .tflite, .pt2); "
                                                    "ratios are against the first.")],
    threads: Annotated[str, typer.Option(help="Comma-separated thread counts, e.g. 1,2,4; "
                                              "'auto' for the runtime's default.")] = "1",
    batch: Annotated[int, typer.Option(help="Images per inference call.")] = 1,
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.")] = 20,
    runs: Annotated[int | None, typer.Option(help="Timed runs per artifact and thread count.",
                                             show_default="200")] = None,
    seconds: Annotated[float | None, typer.Option(help="Time budget per artifact and "
                                                  "thread count, instead of --runs.")] = None,
    backend: Annotated[str, typer.Option(help="auto | onnxruntime | ai_edge_litert | "
                                              "tflite_runtime | torch.")] = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results "
                                                   "and the machine description here.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="report.json of `export --int8`: "
                                                  "refuse files that are not the ones it "
                                                  "wrote (sha256).")] = None,
    remote: Annotated[list[str] | None, typer.Option(
        help="Run on this device over SSH: USER@HOST[:PORT] or an ~/.ssh/config alias; "
             "repeat for several.")] = None,
    ssh_command: Annotated[str, typer.Option(help="The command used instead of ssh "
                                                  "(options, host and the remote command are "
                                                  "appended).")] = "ssh",
    remote_dir: Annotated[str, typer.Option(help="Directory on the device for the venv, "
                                                 "wheels and artifacts.")
                          ] = "~/.cache/edgecnn-remote",
    offline: Annotated[bool, typer.Option("--offline", help="With --remote: download the "
                                          "runtime wheels here for the device's platform and "
                                          "copy them (the device needs no package index).")
                       ] = False,
    validate: Annotated[str | None, typer.Option(
        help="npz:FILE: also validate on the device, first artifact as the reference.")] = None,
    max_drop: Annotated[float, typer.Option(help="With --validate: allowed top-1 drop, "
                                                 "percentage points.")] = 1.0,
    min_agreement: Annotated[float, typer.Option(help="With --validate: required top-1 "
                                                      "agreement (fraction).")] = 0.99,
    gate: Annotated[str, typer.Option(help="With --validate: " + GATE_HELP)] = "point",
    profile: Annotated[bool, typer.Option("--profile", help="Per-op latency instead of the "
                                          "whole-model table: top ops, fp32 vs int8 per "
                                          "layer.")] = False,
    plot: Annotated[Path | None, typer.Option(help="With --profile: a bar plot of time per "
                                              "layer (PNG; needs matplotlib).")] = None,
    top: Annotated[int, typer.Option(help="With --profile: ops in the top table.")] = 15,
) -> None:
    """Latency (p50/p90/p99/mean), throughput, size and peak RSS of artifacts; torch-free."""
    check_all(batch=batch, warmup=warmup, runs=runs, seconds=seconds)
    from edgecnn.progress import console as err
    from edgecnn.runtime.bench import BenchConfig, parse_threads, run_bench
    from edgecnn.runtime.tables import BENCH_HEADERS, bench_rows, rich_table, table_console
    from edgecnn.util import check_writable_file

    if json_path:
        check_writable_file(json_path, "json")
    check_all(max_drop=max_drop, min_agreement=min_agreement, top=top)
    if runs is not None and seconds is not None:
        raise EdgecnnError("pass either --runs or --seconds, not both")
    from edgecnn.runtime.validate import Bounds

    bounds = Bounds(max_drop=max_drop, min_agreement=min_agreement, gate=gate)
    config = BenchConfig(threads=parse_threads(threads), batch=batch, warmup=warmup, runs=runs,
                         seconds=seconds, backend=backend)
    if validate is not None and not validate.startswith("npz:"):
        raise EdgecnnError(f"--validate expects npz:FILE (the device has no dataset "
                           f"readers' sources), got {validate!r}")
    if validate is not None and len(artifacts) < 2:
        raise EdgecnnError("--validate needs a reference and at least one candidate artifact")
    digests = _digests(artifacts, manifest)
    if remote:
        _bench_remote(artifacts, config, remote, ssh_command, remote_dir, offline, validate,
                      bounds, profile, json_path, top)
        return
    if profile:
        _bench_profile(artifacts, config, json_path, plot, top)
        return
    report = run_bench(artifacts, config, progress=err.is_terminal)
    report = replace(report, results=tuple(replace(r, sha256=digests[Path(r.artifact)])
                                           for r in report.results))
    m = report.machine
    table_console(out).print(rich_table(f"edgecnn bench, batch {batch}", BENCH_HEADERS,
                                        bench_rows(report), text_columns=2))
    out.print(f"[dim]{m['cpu']}, {m['usable_cores']}/{m['cores']} cores, {m['os']}, "
              f"Python {m['python']}[/dim]", highlight=False)
    _print_digests(digests, manifest)
    _write_json(json_path, report.to_dict())
    if validate is not None:
        from edgecnn.runtime.validate import run_validate

        result = run_validate(artifacts[0], artifacts[1:], validate, bounds, backend=backend)
        _print_validate([result], validate)
        if not result.passed:
            raise typer.Exit(1)


def gate_sentence(report: ValidationReport) -> str:
    """"top-1 drop <= 1.00 pp and agreement >= 0.9900, held against the measured values
    (--gate point); 95% CIs: Tango's paired score interval, Wilson"."""
    from edgecnn.runtime.tables import gate_phrase

    b = report.bounds
    return (f"top-1 drop <= {b.max_drop:.2f} pp and agreement >= "
            f"{b.min_agreement:.4f}, held against {gate_phrase(b.gate)}; "
            f"95% CIs: Tango's paired score interval (drop), Wilson (agreement)")


def _write_json(path: Path | None, report: dict) -> None:
    from edgecnn.util import atomic_write

    if path:
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        out.print(f"wrote {path}", highlight=False)


def _print_validate(reports: list[ValidationReport], data: str) -> None:
    from edgecnn.runtime.tables import (
        DEVICE_VALIDATE_HEADERS,
        device_label,
        device_validate_rows,
        rich_table,
        table_console,
    )

    table_console(out).print(rich_table(f"edgecnn validate on {data}", DEVICE_VALIDATE_HEADERS,
                                        device_validate_rows(reports), text_columns=4))
    for report in reports:
        for c in report.candidates:
            for note in c.notes:
                out.print(f"{device_label(report)}: {note}", highlight=False, soft_wrap=True)
            for failure in c.failures:
                Console(stderr=True).print(f"[red]FAIL[/red] {escape(failure)}", highlight=False)


def _bench_remote(artifacts: list[Path], config, targets: list[str], ssh_command: str,
                  remote_dir: str, offline: bool, validate: str | None, bounds,
                  profile: bool, json_path: Path | None, top: int) -> None:
    """`bench --remote`: each device in turn, one table with a device column."""
    import shlex

    from edgecnn.runtime import remote as rm
    from edgecnn.runtime.bench import BenchReport
    from edgecnn.runtime.tables import (
        DEVICE_BENCH_HEADERS,
        device_bench_rows,
        rich_table,
        table_console,
    )

    for path in artifacts:
        require_file(path)
    data = Path(validate.removeprefix("npz:")) if validate else None
    if data is not None and not data.is_file():
        raise EdgecnnError(f"--validate {validate}: file not found")
    command = tuple(shlex.split(ssh_command))
    if not command:
        raise EdgecnnError("--ssh-command is empty")
    devices = [rm.Device(rm.Target.parse(t), command, base=remote_dir) for t in targets]
    threads = "auto" if config.threads == (None,) else ",".join(map(str, config.threads))
    bench_args = ["--threads", threads, "--batch", str(config.batch),
                  "--warmup", str(config.warmup), "--backend", config.backend,
                  *(["--seconds", str(config.seconds)] if config.seconds is not None
                    else ["--runs", str(config.runs)]), *(["--profile"] if profile else [])]
    reports, checks, codes = [], [], []
    for device in devices:
        out.print(f"{device.target}: setting up and benchmarking ...", highlight=False)
        reports.append(rm.remote_bench(device, artifacts, bench_args, offline=offline))
        if profile:
            _print_profiles(reports[-1], top, device=str(device.target))
        if data is not None:
            result, code = rm.remote_validate(
                device, artifacts[0], artifacts[1:], data,
                ["--max-drop", str(bounds.max_drop), "--min-agreement",
                 str(bounds.min_agreement), "--gate", bounds.gate],
                offline=offline)
            checks.append(result)
            codes.append(code)
    if not profile:
        reports = [BenchReport.from_dict(r) for r in reports]
        table_console(out).print(rich_table(f"edgecnn bench on {len(devices)} device(s), batch "
                                            f"{config.batch}", DEVICE_BENCH_HEADERS,
                                            device_bench_rows(reports), text_columns=3))
    for report in reports:
        m, d = (report["machine"], report["device"]) if profile else (report.machine,
                                                                      report.device)
        temps = m.get("temperature_c") or {}
        temp = (f", {temps['before']:.1f} -> {temps['after']:.1f} °C"
                if temps.get("before") is not None and temps.get("after") is not None else "")
        out.print(f"[dim]{d['target']}: {m.get('board') or m['cpu']}"
                  f"{' (' + m['cpu'] + ')' if m.get('board') else ''}, {m['usable_cores']}/"
                  f"{m['cores']} cores, governor {m.get('governor') or '–'}{temp}, {m['os']}, "
                  f"Python {m['python']}; venv {d['venv_action']}, copied {d['copied']['sent']}"
                  f" file(s), {d['copied']['skipped']} already there[/dim]", highlight=False,
                  soft_wrap=True)
    if checks:
        _print_validate(checks, validate)
    _write_json(json_path, {"devices": [r if profile else r.to_dict() for r in reports],
                            **({"validate": [c.to_dict() for c in checks]} if checks else {})})
    if any(code == 1 for code in codes):
        raise typer.Exit(1)


def _bench_profile(artifacts: list[Path], config, json_path: Path | None, plot: Path | None,
                   top: int) -> None:
    """`bench --profile`: per-op time of each artifact, tables, JSON, optional plot."""
    from edgecnn.runtime import profile as prof

    profiles = [prof.profile_file(p, runs=config.runs or 50, warmup=config.warmup,
                                  threads=config.threads[0]) for p in artifacts]
    from edgecnn.runtime.machine import describe_machine

    report = {"machine": describe_machine(), "profiles": profiles,
              "comparisons": prof.comparisons(profiles)}
    _print_profiles(report, top)
    if plot is not None:
        if prof.plot_layers(profiles, plot):
            out.print(f"wrote {plot}", highlight=False)
        else:
            out.print(f"no plot: matplotlib is not installed ({plot} not written)",
                      highlight=False)
    _write_json(json_path, report)


def _print_profiles(report: dict, top: int, device: str = "") -> None:
    """Top ops and the share per layer kind of each file, then fp32 vs int8 per layer."""
    from edgecnn.runtime import profile as prof
    from edgecnn.runtime.tables import (
        PROFILE_TOP_HEADERS,
        profile_compare_rows,
        profile_top_rows,
        rich_table,
        table_console,
    )

    console, on = table_console(out), f" on {device}" if device else ""
    for p in report["profiles"]:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in prof.by_kind(p).items())
        whole = (f", whole run {p['whole_run_us'] / 1e3:.3f} ms"
                 if p.get("whole_run_us") else "")
        threads = p["threads"] or "default"
        console.print(rich_table(f"{p['name']}{on}: top ops ({p['method']}, {threads} "
                                 f"thread(s)), sum of ops {p['total_us'] / 1e3:.3f} ms{whole}",
                                 PROFILE_TOP_HEADERS, profile_top_rows(p, top), text_columns=3))
        out.print(f"{p['name']}{on} by layer kind: {shares}", highlight=False)
    totals = {p["name"]: p["total_us"] for p in report["profiles"]}
    for c in report["comparisons"]:
        base, other = c["base"], c["other"]
        headers = ("layer", f"{base} µs", f"{other} µs", "speed-up")
        console.print(rich_table(f"per layer{on}: {base} vs {other} "
                                 f"({totals[base] / max(totals[other], 1e-9):.2f}× overall)",
                                 headers, profile_compare_rows(c["layers"])))


def _digests(paths: list[Path], manifest: Path | None) -> dict[Path, str]:
    """sha256 of each artifact, checked against `--manifest` when given."""
    from edgecnn.runtime.manifest import sha256_file, verify

    if manifest is not None:
        return verify(paths, manifest)
    for path in paths:
        require_file(path)
    return {Path(p): sha256_file(Path(p)) for p in paths}


def _print_digests(digests: dict[Path, str], manifest: Path | None) -> None:
    checked = f" (matches {manifest})" if manifest else ""
    for path, digest in digests.items():
        out.print(f"sha256 {digest}  {path}{checked}", highlight=False, soft_wrap=True)


@app.command("validate")
def validate_command(
    reference: Annotated[Path, typer.Option(help="The reference artifact (typically fp32 ONNX).")],
    candidate: Annotated[list[Path], typer.Option(help="A candidate artifact; repeat the flag "
                                                  "for several.")],
    data: Annotated[str, typer.Option(help="digits | mnist:DIR | cifar10:DIR | "
                                           "imagefolder:DIR | npz:FILE")],
    max_drop: Annotated[float, typer.Option(help="Allowed top-1 drop, percentage points.")] = 1.0,
    min_agreement: Annotated[float, typer.Option(help="Required top-1 agreement with the "
                                                      "reference (fraction).")] = 0.99,
    gate: Annotated[str, typer.Option(help=GATE_HELP)] = "point",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results "
                                                   "as JSON.")] = None,
    markdown_path: Annotated[Path | None, typer.Option("--markdown", help="Write the "
                                                       "markdown table.")] = None,
    backend: Annotated[str, typer.Option(help="auto | onnxruntime | ai_edge_litert | "
                                              "tflite_runtime | torch.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Runtime threads.",
                                                show_default="the runtime's")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split "
                                           "(as in training).")] = 0,
    manifest: Annotated[Path | None, typer.Option(help="report.json of `export --int8`: "
                                                  "refuse files that are not the ones it "
                                                  "wrote (sha256).")] = None,
) -> None:
    """Accuracy gate: exit 0 when every candidate is within bounds, 1 when one is not."""
    check_all(max_drop=max_drop, min_agreement=min_agreement, threads=threads, seed=seed)
    from edgecnn.data import check_spec
    from edgecnn.runtime.tables import (
        VALIDATE_HEADERS,
        rich_table,
        table_console,
        to_markdown,
        validate_rows,
        worst_line,
    )
    from edgecnn.runtime.validate import Bounds, append_step_summary, run_validate
    from edgecnn.util import atomic_write, check_writable_file

    bounds = Bounds(max_drop=max_drop, min_agreement=min_agreement, gate=gate)
    check_spec(data)
    for parameter, target in (("json", json_path), ("markdown", markdown_path)):
        if target:
            check_writable_file(target, parameter)

    digests = _digests([reference, *candidate], manifest)
    report = run_validate(reference, candidate, data, bounds, backend=backend, threads=threads,
                          seed=seed)
    report = replace(report, reference=replace(report.reference,
                                               sha256=digests[Path(report.reference.artifact)]),
                     candidates=tuple(replace(c, sha256=digests[Path(c.artifact)])
                                      for c in report.candidates))
    table_console(out).print(rich_table(f"edgecnn validate on {data} "
                                        f"({report.num_images} images)",
                                        VALIDATE_HEADERS, validate_rows(report), text_columns=3))
    out.print(f"gate: {gate_sentence(report)}", highlight=False, soft_wrap=True)
    for c in report.candidates:
        if c.worst_classes:
            out.print(f"{c.name}: {worst_line(c.worst_classes, report.min_class_images)}",
                      highlight=False, soft_wrap=True)
        for note in c.notes:
            out.print(note, highlight=False, soft_wrap=True)
    _print_digests(digests, manifest)
    markdown = to_markdown(report)
    for target, text in ((json_path, json.dumps(report.to_dict(), indent=2) + "\n"),
                         (markdown_path, markdown)):
        if target:
            with atomic_write(target) as tmp:
                tmp.write_text(text, encoding="utf-8")
    append_step_summary(markdown)
    failures = [f for c in report.candidates for f in c.failures]
    for failure in failures:
        Console(stderr=True).print(f"[red]FAIL[/red] {escape(failure)}", highlight=False,
                                   soft_wrap=True)
    if failures:
        raise typer.Exit(1)


@app.command("inspect")
def inspect_command(
    reference: Annotated[Path, typer.Option(help="The fp32 artifact (.onnx or .tflite).")],
    candidate: Annotated[Path, typer.Option(help="The int8 artifact (.onnx QDQ or full-int8 "
                                                 ".tflite; edgecnn's or another tool's).")],
    data: Annotated[str, typer.Option(help="digits | mnist:DIR | cifar10:DIR | "
                                           "imagefolder:DIR | npz:FILE")],
    images: Annotated[int, typer.Option(help="Validation images to run.")] = 32,
    top: Annotated[int, typer.Option(help="Layers in the table (worst first).")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every layer's "
                                                   "figures as JSON.")] = None,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Write the SQNR-along-"
                                                   "depth plot (PNG; needs matplotlib).")] = None,
    threads: Annotated[int | None, typer.Option(
        help="Runtime threads.", show_default="onnxruntime's default; 1 for LiteRT")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split "
                                           "(as in training).")] = 0,
) -> None:
    """Where int8 error comes from: every quantized tensor against fp32, layer by layer;
    torch-free."""
    from edgecnn.runtime.tables import rich_table, table_console
    from edgecnn.util import atomic_write
    from edgecnn.verify.inspect import (
        HEADERS,
        LEGEND,
        findings,
        plot_sqnr,
        run_inspect,
        table_rows,
        to_json,
    )

    if top < 1:
        raise EdgecnnError(f"--top must be at least 1, got {top}")
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise EdgecnnError(f"--plot {plot_path}: the plot is a PNG file (.png)")
    report = run_inspect(reference, candidate, data, images=images, seed=seed, threads=threads)
    console = table_console(out)
    for kernels in report["runtimes"]:
        console.print(rich_table(f"edgecnn inspect: {candidate.name} vs {reference.name} on "
                                 f"{data}, {report['images']} images, {kernels}",
                                 HEADERS, table_rows(report, kernels, top), text_columns=4))
        for line in findings(report, kernels):
            out.print(line, highlight=False, soft_wrap=True)
    out.print(f"[dim]{LEGEND}. {len(report['layers'])} of "
              f"{len(report['layers']) + len(report['unmatched'])} quantized tensors matched "
              f"(same name for {100 * report['names_agree']:.0f}%)[/dim]", highlight=False,
              soft_wrap=True)
    if json_path:
        with atomic_write(json_path) as tmp:
            tmp.write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
        out.print(f"wrote {json_path}", highlight=False)
    if plot_path:
        if plot_sqnr(report, plot_path):
            out.print(f"wrote {plot_path}", highlight=False)
        else:
            Console(stderr=True).print("[yellow]warning:[/yellow] --plot needs matplotlib "
                                       "(pip install matplotlib); no plot written",
                                       highlight=False)


# PTQ steps (`edgecnn.quant.equalize`, `edgecnn.quant.bias_correction`): export and quantize
Cle = Annotated[bool, typer.Option("--cle", help="PTQ: cross-layer equalization of conv pairs "
                                   "joined by ReLU or nothing (Nagel et al. 2019), before "
                                   "calibration; ReLU6 / SiLU pairs are left alone.")]
BiasCorrection = Annotated[bool, typer.Option(
    "--bias-correction", help="PTQ: subtract each int8 layer's mean output error (int8 vs "
    "float weights, on the calibration images) from its bias.")]


def _check_method_flags(method: str, given: dict[str, str | None]) -> None:
    """A flag of the other quantization method is an error, not silently dropped: one line
    naming it. `given`: {flag: the method it belongs to, or None when it was not set}."""
    misplaced = [flag for flag, owner in given.items() if owner is not None and owner != method]
    if misplaced:
        owner = given[misplaced[0]]
        raise EdgecnnError(f"{' and '.join(misplaced)} {'does' if len(misplaced) == 1 else 'do'}"
                           f" not apply to {method.upper()} ({owner.upper()} only)")


KEEP_FLOAT_HELP = ("Keep the layers this regular expression matches in full (module path such "
                   "as block.conv or block, or node name) float: DEQUANTIZE / QUANTIZE around "
                   "them in TFLite, no Q/DQ on them in ONNX. Repeatable.")
INT16_HELP = ("Give the layers and ops this regular expression matches (the --keep-float "
              "rules) TFLite's 16x8 scheme: int16 activations (zero point 0), int8 weights, "
              "int64 bias; int16 Q/DQ (opset 21) in ONNX. Conv / linear and the ops whose "
              "builtin has a 16x8 kernel on LiteRT and tflite-runtime 2.14 (pools, add, mul, "
              "sub, mean, concat, reshapes, pad, relu / relu6 / leaky relu, sigmoid, resize); "
              "int16 tensors between them stay int16. XNNPACK runs no int16 op: they run on "
              "the builtin kernels. Repeatable.")


@app.command("export")
def export_command(
    model: Annotated[str, typer.Argument(help="Zoo name or package.module:factory.")],
    int8: Annotated[bool, typer.Option("--int8", help="The whole job: train (when no "
                                       "--checkpoint), quantize, export fp32 and int8, "
                                       "validate, bench, report.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        help="fp32 checkpoint directory (from `edgecnn train`).")] = None,
    quantized: Annotated[Path | None, typer.Option(
        help="Without --int8: a quantized program directory (from `edgecnn quantize`) "
             "to export as int8.")] = None,
    formats: Annotated[str, typer.Option("--formats", "--format",
                                         help="Comma-separated: onnx, tflite.")] = "onnx,tflite",
    data: Annotated[str, typer.Option(help="Training / validation data spec.")] = "digits",
    mean: Mean = None,
    std: Std = None,
    resize: Resize = None,
    resize_size: ResizeSize = None,
    interpolation: Interpolation = "bilinear",
    ptq: Annotated[bool, typer.Option("--ptq", help="Post-training quantization "
                                      "instead of QAT.")] = False,
    qat_epochs: Annotated[int | None, typer.Option(help="QAT fine-tuning epochs (not with "
                                                   "--ptq).", show_default="3")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="fp32 training epochs when no --checkpoint is given.", show_default="6")] = None,
    max_drop: Annotated[float, typer.Option(help="Allowed int8 top-1 drop, "
                                                 "percentage points.")] = 1.0,
    min_agreement: Annotated[float, typer.Option(help="Required int8 top-1 agreement with "
                                                      "the fp32 reference (fraction).")] = 0.99,
    io: Annotated[str | None, typer.Option(
        help="int8 TFLite input/output: int8 | uint8 | float (int8 artifacts: --int8 or "
             "--quantized).", show_default="int8")] = None,
    input_size: Annotated[int | None, typer.Option(
        help="Square input size.", show_default="32 for images up to 64 px, else 224")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output directory.",
                                                 show_default="artifacts/MODEL")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every stage.")] = False,
    onnx_activations: Annotated[str | None, typer.Option(
        help="int8 ONNX activation type: uint8 | int8 (int8 artifacts: --int8 or "
             "--quantized).", show_default="uint8")] = None,
    keep_float: Annotated[list[str] | None, typer.Option(
        "--keep-float", help=KEEP_FLOAT_HELP)] = None,
    int16: Annotated[list[str] | None, typer.Option("--int16", help=INT16_HELP)] = None,
    fallback: Annotated[str, typer.Option(
        help="none | int16 | float: when an int8 artifact's drop exceeds --max-drop, move the "
             "layers adding most int8 error (inspect, on the training split's tail) to int16 "
             "(16x8) or float, one group at a time, until it is within.")] = "none",
    cle: Cle = False,
    bias_correction: BiasCorrection = False,
    pretrained: Annotated[Path | None, typer.Option(help="With --int8: " + PRETRAINED_HELP
                                                    + " --epochs 0 uses them as they are.")
                          ] = None,
    drop_background: DropBackground = False,
    padding: Padding = "symmetric",
    bn_eps: BnEps = None,
    freeze_epochs: FreezeEpochs = 0,
    backbone_lr_factor: BackboneLrFactor = 0.1,
) -> None:
    """Export artifacts; with --int8, the one command from model to validated int8 files."""
    check_all(qat_epochs=qat_epochs, epochs=epochs, max_drop=max_drop,
              min_agreement=min_agreement, input_size=input_size,
              backbone_lr_factor=backbone_lr_factor)
    preprocess = preprocess_options(mean, std, resize, resize_size, interpolation)
    if preprocess is not None and not int8:
        raise EdgecnnError("--mean, --std, --resize, --resize-size and --interpolation set a new "
                           "model's preprocessing (export --int8 or train); export without "
                           "--int8 uses the checkpoint's record")
    from edgecnn import pipeline
    from edgecnn.artifacts import ArtifactConfig, export_artifacts

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    if int8:
        from dataclasses import replace

        from edgecnn.export.onnx import DEFAULT_ACTIVATIONS
        from edgecnn.quant.recipe import PTQ, QAT
        from edgecnn.quant.spec import QuantConfig
        from edgecnn.reference import Training
        from edgecnn.runtime.validate import Bounds

        _check_method_flags("ptq" if ptq else "qat", {
            "--qat-epochs": "qat" if qat_epochs is not None else None,
            "--cle": "ptq" if cle else None,
            "--bias-correction": "ptq" if bias_correction else None})
        if checkpoint is not None:  # before _starting_point: its flags need --pretrained
            given = [flag for flag, used in (
                ("--pretrained", pretrained is not None),
                ("--drop-background", drop_background),
                ("--padding / --bn-eps", padding != "symmetric" or bn_eps is not None),
                ("--mean / --std / --resize", preprocess), ("--epochs", epochs is not None),
                ("--input-size", input_size is not None), ("--freeze-epochs", freeze_epochs),
                ("--backbone-lr-factor", backbone_lr_factor != 0.1)) if used]
            if given:
                raise EdgecnnError(f"--checkpoint gives a trained model (its config.json fixes "
                                   f"it): {', '.join(given)} "
                                   f"{'is' if len(given) == 1 else 'are'} for training a new "
                                   "one, without --checkpoint")
        weights, options = _starting_point(pretrained, drop_background, padding, bn_eps,
                                           epochs, freeze_epochs)
        schedule = replace(pipeline.DEFAULT_TRAIN, freeze_epochs=freeze_epochs,
                           backbone_lr_factor=backbone_lr_factor,
                           **({} if epochs is None else {"epochs": epochs}))
        reference = checkpoint if checkpoint is not None else Training(
            schedule, input_size=input_size, pretrained=weights, model_options=options,
            preprocess=preprocess)
        recipe = (PTQ(cle=cle, bias_correction=bias_correction) if ptq else QAT(train=replace(
            QAT().train, epochs=QAT().train.epochs if qat_epochs is None else qat_epochs)))
        report = pipeline.export_int8(
            model, data=data, reference=reference, recipe=recipe,
            quant=QuantConfig(keep_float=tuple(keep_float or ()), int16=tuple(int16 or ())),
            artifacts=ArtifactConfig(fmts, ArtifactConfig.io if io is None else io,
                                     onnx_activations or DEFAULT_ACTIVATIONS),
            bounds=Bounds(max_drop=max_drop, min_agreement=min_agreement), fallback=fallback,
            out=out_dir, force=force)
        _print_report(report)
        if not report.passed:
            for failure in report.failures():
                Console(stderr=True).print(f"[red]FAIL[/red] {escape(failure)}", highlight=False,
                                           soft_wrap=True)
            raise typer.Exit(1)
        return
    if keep_float:
        raise EdgecnnError("--keep-float needs --int8 (or pass it to `edgecnn quantize`)")
    if int16:
        raise EdgecnnError("--int16 needs --int8 (or pass it to `edgecnn quantize`)")
    if fallback != "none":
        raise EdgecnnError("--fallback needs --int8")
    if cle or bias_correction:
        raise EdgecnnError("--cle and --bias-correction are PTQ steps: they go with --int8 "
                           "--ptq (or `edgecnn quantize --method ptq`)")
    if pretrained is not None or padding != "symmetric" or freeze_epochs:
        raise EdgecnnError("--pretrained, --padding and --freeze-epochs go with --int8 (or "
                           "`edgecnn train`); without it, --checkpoint fixes the model")
    int8_only = [flag for flag, used in (("--io", io is not None),
                                         ("--onnx-activations", onnx_activations is not None))
                 if used]
    if quantized is None and int8_only:
        raise EdgecnnError(f"{' and '.join(int8_only)} "
                           f"{'sets' if len(int8_only) == 1 else 'set'} the int8 artifacts "
                           "(--int8, or --quantized QDIR); without them export writes fp32 "
                           "files, float in and out")
    if checkpoint is None:
        raise EdgecnnError("export needs --checkpoint DIR (or --int8 to train one)")
    from edgecnn.export.onnx import DEFAULT_ACTIVATIONS
    from edgecnn.util import check_writable_dir

    artifacts = ArtifactConfig(fmts, ArtifactConfig.io if io is None else io,
                               onnx_activations or DEFAULT_ACTIVATIONS)
    check_writable_dir(out_dir or Path("artifacts"), "out")
    written = export_artifacts(checkpoint, out_dir or Path("artifacts"), artifacts,
                               model_name=model, quantized=quantized)
    for path in written:
        out.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", highlight=False)


def _print_report(report) -> None:
    from edgecnn.report import SUMMARY_HEADERS, interval_lines, precision_lines, ptq_method_lines
    from edgecnn.runtime.tables import rich_table, table_console

    d = report.data
    title = (f"{d['model']} on {d['data']}, {d['method'].upper()}: "
             f"fp32 reference {100 * d['reference_accuracy']:.2f}%")
    table_console(out).print(rich_table(title, SUMMARY_HEADERS, report.summary_rows()))
    for line in [*interval_lines(report), *precision_lines(d), *ptq_method_lines(d)]:
        out.print(line, highlight=False)
    record = d.get("fallback")
    if record and len(record["steps"]) > 1:
        out.print(f"fallback {record['mode']}: moved {', '.join(record['moved'])} in "
                  f"{len(record['steps']) - 1} step(s); "
                  f"{'within' if record['within_bound'] else 'still outside'} the bound "
                  "(report.md: drop and latency per step)", highlight=False)
    out.print(f"wrote {report.directory}/report.json, report.md, latency_vs_accuracy.png",
              highlight=False)


@app.command("convert")
def convert_command(
    model: Annotated[Path, typer.Argument(help="ONNX model: fp32, or QDQ int8 (any tool's).")],
    out_path: Annotated[Path | None, typer.Option("--out", help="Output .tflite "
                                                  "(default: MODEL with .tflite).")] = None,
    io: Annotated[str, typer.Option(help="int8 | uint8 | float: input/output type of a quantized "
                                         "model (float adds QUANTIZE/DEQUANTIZE).")] = "int8",
) -> None:
    """Convert ONNX to TFLite without TensorFlow: NHWC input, full int8 for QDQ models."""
    import time
    import warnings

    from edgecnn.config import sidecar_path
    from edgecnn.export.tflite import convert

    if model.is_dir():  # before with_suffix, which fails on '/'
        raise EdgecnnError(f"ONNX model {model} is a directory, not a file")
    target = out_path or model.with_suffix(".tflite")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = convert(model, target, io=io)
    seconds = time.perf_counter() - start
    for warning in caught:
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {warning.message}",
                                   highlight=False, soft_wrap=True)
    from edgecnn.verify.litert import op_counts  # needs ai-edge-litert, as convert did

    counts = op_counts(path)
    out.print(f"{model} -> {path} ({path.stat().st_size / 1e6:.2f} MB, "
              f"{sum(counts.values())} ops, {seconds:.2f}s)", highlight=False)
    out.print(", ".join(f"{name} {n}" for name, n in counts.most_common()), highlight=False)
    if sidecar_path(path).exists():
        out.print(f"metadata -> {sidecar_path(path)}", highlight=False)


@app.command("quantize")
def quantize_command(
    model: Annotated[str, typer.Argument(help="Zoo name or package.module:factory "
                                              "(must match the checkpoint).")],
    checkpoint: Annotated[Path, typer.Option(help="fp32 checkpoint directory (edgecnn train).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory for "
                                          "model_int8.pt2, metrics.json, config.json.")],
    data: Annotated[str | None, typer.Option(help="Data spec [default: the checkpoint's].")
                    ] = None,
    method: Annotated[str, typer.Option(help="qat (fine-tune) | ptq (calibrate only).")] = "qat",
    epochs: Annotated[int | None, typer.Option(help="QAT fine-tuning epochs.",
                                               show_default="3")] = None,
    lr: Annotated[float | None, typer.Option(help="QAT peak learning rate (cosine schedule).",
                                             show_default="3e-05")] = None,
    calib_batches: Annotated[int | None, typer.Option(help="PTQ calibration batches.",
                                                      show_default="32")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size (QAT and calibration).")] = 64,
    observer: Annotated[str, typer.Option(help="PTQ activation observer: minmax | "
                                               "moving_average | histogram.")] = "minmax",
    strict: Annotated[bool, typer.Option(help="Fail on an op the quantizer does not know "
                                              "instead of leaving it float.")] = False,
    keep_float: Annotated[list[str] | None, typer.Option(
        "--keep-float", help=KEEP_FLOAT_HELP)] = None,
    int16: Annotated[list[str] | None, typer.Option("--int16", help=INT16_HELP)] = None,
    cle: Cle = False,
    bias_correction: BiasCorrection = False,
    device: Device = "auto",
    workers: Workers = None,
) -> None:
    """int8-quantize an fp32 checkpoint (TFLite spec); writes the Q/DQ program and metrics.
    Under torchrun, QAT trains as DistributedDataParallel and rank 0 writes."""
    if method not in ("qat", "ptq"):
        raise EdgecnnError(f"--method {method!r} is unknown; known: qat, ptq")
    _check_method_flags(method, {
        "--epochs": "qat" if epochs is not None else None,
        "--lr": "qat" if lr is not None else None,
        "--calib-batches": "ptq" if calib_batches is not None else None,
        "--cle": "ptq" if cle else None,
        "--bias-correction": "ptq" if bias_correction else None})
    from edgecnn.quant.recipe import PTQ, QAT

    epochs = QAT().train.epochs if epochs is None else epochs
    lr = QAT().train.lr if lr is None else lr
    calib_batches = PTQ.calib_batches if calib_batches is None else calib_batches
    check_all(epochs=epochs, lr=lr, calib_batches=calib_batches, batch_size=batch_size)
    if method == "qat" and epochs < 1:
        raise EdgecnnError(f"--epochs must be at least 1 with --method qat, got {epochs}")
    from edgecnn.quant.spec import OBSERVERS

    if observer not in OBSERVERS:
        raise EdgecnnError(f"--observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
    from edgecnn.util import check_writable_dir

    if data is not None:
        from edgecnn.data import check_spec

        check_spec(data)
    check_writable_dir(out_dir, "out")
    execution = _execution(device, workers)
    from dataclasses import replace

    from edgecnn.quant.run import quantize_checkpoint, training_seed
    from edgecnn.quant.spec import QuantConfig

    recipe = (PTQ(calib_batches=calib_batches, batch_size=batch_size, cle=cle,
                  bias_correction=bias_correction) if method == "ptq" else
              QAT(train=replace(QAT().train, epochs=epochs, lr=lr, batch_size=batch_size,
                                seed=training_seed(checkpoint))))
    result = quantize_checkpoint(checkpoint, out_dir, recipe, data=data, model_name=model,
                                 config=QuantConfig(observer=observer, strict=strict,
                                                    keep_float=tuple(keep_float or ()),
                                                    int16=tuple(int16 or ())),
                                 execution=execution)
    out.print(f"{model} {method}: fp32 {result.fp32_accuracy:.4f} -> int8 "
              f"[bold]{result.int8_accuracy:.4f}[/bold] (drop {result.accuracy_drop:.2f} "
              f"points) in {result.quantize_seconds:.1f}s -> {out_dir}", highlight=False)
    if result.float_layers:
        out.print(f"float layers: {', '.join(result.float_layers)}", highlight=False)
    if result.float_islands:
        out.print(f"float islands (no int8 kernel): {', '.join(result.float_islands)}",
                  highlight=False)
    if result.int16_layers:
        out.print(f"int16 layers (16x8): {', '.join(result.int16_layers)}", highlight=False)
    if result.int16_ops:
        out.print(f"int16 ops (16x8): {', '.join(result.int16_ops)}", highlight=False)
    from edgecnn.report import ptq_method_lines

    for line in ptq_method_lines(result.to_dict()):
        out.print(line, highlight=False)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each on stderr, `warning: ...`, without the source location."""
    Console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(str(message))}",
                               highlight=False, soft_wrap=True)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives (CI cancellation, `timeout`)."""


_WATCHDOG: list = []  # the one watchdog timer, once SIGTERM came


def _on_sigterm(signum: int, frame: object) -> None:
    """Raise Terminated in the main thread; should library code swallow it (a finalizer, a
    broad handler inside an exporter), a watchdog still ends the process 5 s later."""
    import os
    import threading

    def force_exit() -> None:
        Console(stderr=True).print("terminated (SIGTERM)", highlight=False, soft_wrap=True)
        os._exit(143)

    if not _WATCHDOG:
        _WATCHDOG.append(threading.Timer(5.0, force_exit))
        _WATCHDOG[0].daemon = True
        _WATCHDOG[0].start()
    raise Terminated()


def _on_unraisable(hook_args) -> None:
    """A signal that arrived while a finalizer or weakref callback ran raises inside it,
    where Python can only print the exception ("Exception ignored in ...", with a
    traceback) and go on. Such a Terminated / KeyboardInterrupt is delivered again to the
    main thread a moment later, from a timer thread (`_thread.interrupt_main`: delivered
    from here, it would land in this hook), so the command still stops, quietly;
    anything else goes to Python's own hook."""
    import _thread
    import signal
    import threading

    if isinstance(hook_args.exc_value, (Terminated, KeyboardInterrupt)):
        signum = signal.SIGTERM if isinstance(hook_args.exc_value, Terminated) \
            else signal.SIGINT
        timer = threading.Timer(0.01, _thread.interrupt_main, (signum,))
        timer.daemon = True
        timer.start()
        return
    sys.__unraisablehook__(hook_args)


def _click_exceptions():
    """The exception module of the click typer runs on (typer >= 0.22 vendors its own)."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _quiet_other_ranks() -> None:
    """Under torchrun, ranks other than 0 print nothing but errors: no progress bars,
    results or warnings twice (read from the environment: no torch import)."""
    import os
    import warnings

    if os.environ.get("RANK", "0") != "0" and "WORLD_SIZE" in os.environ:
        from edgecnn.progress import console

        out.quiet = console.quiet = True
        warnings.simplefilter("ignore")


def _run_app():
    """The command; then leave a torchrun process group if one was joined."""
    try:
        return app(standalone_mode=False)  # click's usage errors come here, not as a box
    finally:
        distributed = sys.modules.get("edgecnn.distributed")
        if distributed is not None:
            distributed.shutdown()


def _exit(code: int) -> None:
    """Exit with `code`, the command's own: a SIGTERM / SIGINT that comes after the work is
    done (while the interpreter shuts down, when Python has put back the default action,
    which would kill the process with -15) is ignored."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; warnings one
    line each.

    SIGINT and SIGTERM stop the command like Ctrl-C: the `finally` blocks run
    (temporary files go), one line says so, and the exit code is 128 + the
    signal number (130, 143), without a traceback. Third-party import chatter is
    hidden unless --verbose (`_quiet`).
    """
    import signal
    import warnings

    warnings.showwarning = _show_warning
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _on_unraisable
    _quiet(verbose="--verbose" in sys.argv[1:2])
    _quiet_other_ranks()
    click = _click_exceptions()
    try:
        code = _run_app()  # click's usage errors come here, not as a box
    except click.NoArgsIsHelpError as exc:  # `edgecnn` or `edgecnn CMD` alone: the help
        exc.show()
        _exit(2)
    except click.UsageError as exc:  # a flag value of the wrong type, an unknown flag
        command = exc.ctx.command_path if exc.ctx else "edgecnn"
        message = escape(f"{command}: {exc.format_message()} (see {command} --help)")
        Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False,
                                   soft_wrap=True)
        _exit(2)
    except click.ClickException as exc:
        Console(stderr=True).print(f"[red]error:[/red] {escape(exc.format_message())}",
                                   highlight=False, soft_wrap=True)
        _exit(exc.exit_code)
    except typer.Abort:  # EOF at a prompt
        _exit(1)
    except EdgecnnError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {escape(exc.for_cli())}", highlight=False,
                                   soft_wrap=True)
        _exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted (SIGINT)", highlight=False, soft_wrap=True)
        _exit(130)
    except Terminated:
        Console(stderr=True).print("terminated (SIGTERM)", highlight=False, soft_wrap=True)
        _exit(143)
    if code == 130:  # typer turns a KeyboardInterrupt inside a command into exit code 130
        Console(stderr=True).print("interrupted (SIGINT)", highlight=False, soft_wrap=True)
    _exit(code if isinstance(code, int) else 0)
