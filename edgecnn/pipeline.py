"""Stages that string the modules together; the CLI and the Python API call these."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgecnn.checkpoint import ModelConfig, save_checkpoint
from edgecnn.data import load
from edgecnn.models import create_model
from edgecnn.train import TrainConfig, model_options_for, preprocessing_for, train
from edgecnn.util import atomic_write


def train_reference(model_name: str, data: str, directory: Path,
                    config: TrainConfig | None = None, *, input_size: int | None = None,
                    width_mult: float = 1.0, show_progress: bool = True) -> dict:
    """Train the fp32 reference and write checkpoint.pt, config.json and metrics.json."""
    config = config or TrainConfig()
    dataset = load(data, seed=config.seed)
    preprocessing = preprocessing_for(dataset, input_size)
    options = model_options_for(preprocessing, width_mult)
    torch.manual_seed(config.seed)  # weight init is part of the seeded run
    model = create_model(model_name, **options)
    metrics = train(model, dataset, preprocessing, config, show_progress=show_progress)
    save_checkpoint(Path(directory), model, ModelConfig(model_name, preprocessing, options, data))
    metrics = {"model": model_name, "data": data, **metrics}
    with atomic_write(Path(directory) / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return metrics


def export_onnx(checkpoint: Path, out_dir: Path, *, model_name: str | None = None,
                quantized: Path | None = None, activations: str | None = None) -> Path:
    """Write `model_fp32.onnx` from a checkpoint, or `model_int8.onnx` from a quantized dir."""
    from edgecnn.checkpoint import load_checkpoint
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
