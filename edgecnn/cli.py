"""The `edgecnn` command. Thin: parse flags, call the modules, print.

Commands that run on devices (`bench`, `validate`) must not import torch, so
every torch-using module is imported inside its command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgecnn import __version__
from edgecnn.errors import EdgecnnError

app = typer.Typer(
    name="edgecnn",
    help="Mobile CNNs from PyTorch to int8 ONNX and TFLite, with accuracy and latency measured.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()


def _version(value: bool) -> None:
    if value:
        print(f"edgecnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """edgecnn: train, quantize, export, benchmark and validate mobile CNNs."""


@app.command("models")
def models_command(
    input_size: Annotated[int, typer.Option(help="Square input size for the MAC count.")] = 224,
    num_classes: Annotated[int, typer.Option(help="Classifier outputs.")] = 1000,
    in_channels: Annotated[int, typer.Option(help="Input channels.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List the model zoo with parameters and MACs at an input size."""
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
) -> None:
    """Train the fp32 reference model; writes checkpoint.pt, config.json, metrics.json."""
    from edgecnn.pipeline import train_reference
    from edgecnn.train import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         label_smoothing=label_smoothing, seed=seed)
    directory = out_dir or Path("checkpoints") / model.replace(":", "_")
    metrics = train_reference(model, data, directory, config, input_size=input_size,
                              width_mult=width_mult)
    out.print(f"{model} on {data}: val_accuracy [bold]{metrics['val_accuracy']:.4f}[/bold] "
              f"in {metrics['train_seconds']:.1f}s -> {directory}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except EdgecnnError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
