"""`edgecnn quantize`: fp32 checkpoint -> int8 program, with accuracy measured on both.

Loads the checkpoint and its data (same seeded split as training), quantizes,
measures fp32 and int8 validation accuracy, and writes model_int8.pt2,
metrics.json and config.json (see `edgecnn.quant.artifact`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from edgecnn import distributed
from edgecnn.checkpoint import load_checkpoint
from edgecnn.config import ArtifactMetadata
from edgecnn.data import load as load_data
from edgecnn.data.loader import ImageDataset
from edgecnn.distributed import Execution
from edgecnn.errors import ParameterError
from edgecnn.quant import METHODS, quantize
from edgecnn.quant.artifact import save_program
from edgecnn.quant.graph import qdq_counts
from edgecnn.quant.precision import float_islands, float_layers, int8_layers, int16_layers
from edgecnn.quant.qat import QATConfig
from edgecnn.quant.spec import QuantConfig, check_ptq_methods
from edgecnn.train import evaluate


def training_seed(checkpoint: Path) -> int:
    """The seed the checkpoint was trained with (it fixes the train/val split), else 0."""
    path = Path(checkpoint) / "metrics.json"
    try:
        seed = json.loads(path.read_text())["train_config"]["seed"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return 0
    return seed if isinstance(seed, int) and not isinstance(seed, bool) \
        and 0 <= seed < 2**32 else 0


def quantize_checkpoint(checkpoint: Path, out: Path, *, method: str = "qat",
                        data: str | None = None, model_name: str | None = None,
                        config: QuantConfig | None = None,
                        qat_config: QATConfig | None = None, calib_batches: int = 32,
                        batch_size: int = 64, seed: int | None = None,
                        show_progress: bool = True,
                        execution: Execution | None = None) -> dict:
    """Quantize the checkpoint in `checkpoint` to `out`; return the metrics written.

    The images are decoded a batch at a time (`edgecnn.data.loader`). Under torchrun,
    QAT trains as DistributedDataParallel (`execution`: device, loader workers), the
    accuracies are measured on every rank's share and summed, and rank 0 alone writes
    `out` (the others wait for it); PTQ calibrates the same images on every rank.
    """
    if method not in METHODS:
        raise ParameterError("method", f"{method!r} is unknown; known: {', '.join(METHODS)}")
    check_ptq_methods(config, method)
    model, model_config = load_checkpoint(Path(checkpoint), model_name)
    spec = data or model_config.data
    if not spec:
        raise ParameterError("data", f"is needed: checkpoint {checkpoint} records no data spec")
    split_seed = training_seed(checkpoint) if seed is None else seed
    dataset = load_data(spec, seed=split_seed)
    preprocessing = model_config.preprocessing
    if dataset.num_classes != preprocessing.num_classes:
        raise ParameterError("data", f"{spec} has {dataset.num_classes} classes, the "
                                     f"checkpoint {preprocessing.num_classes}")
    train_items = ImageDataset(dataset.train_images, dataset.train_labels, preprocessing)
    val_items = ImageDataset(dataset.val_images, dataset.val_labels, preprocessing)
    example = torch.stack([train_items[i][0] for i in range(min(2, len(train_items)))])
    config = config or QuantConfig()
    qat_config = qat_config or QATConfig(seed=split_seed)

    fp32_accuracy = evaluate(model, val_items, execution=execution)
    start = time.perf_counter()
    converted = quantize(model, example, method, train_data=train_items, config=config,
                         qat_config=qat_config, calib_batches=calib_batches,
                         batch_size=batch_size, seed=split_seed,
                         show_progress=show_progress and distributed.is_main(),
                         execution=execution)
    seconds = time.perf_counter() - start
    int8_accuracy = evaluate(converted, val_items, execution=execution, device="cpu")

    metrics = {
        "model": model_config.model, "data": spec, "method": method,
        "fp32_accuracy": fp32_accuracy, "int8_accuracy": int8_accuracy,
        "accuracy_drop": round(100.0 * (fp32_accuracy - int8_accuracy), 4),
        "val_images": len(val_items), "quantize_seconds": round(seconds, 2),
        "quant_config": config.to_dict(), "node_counts": qdq_counts(converted),
        "float_layers": float_layers(converted), "int8_layers": int8_layers(converted),
        "int16_layers": int16_layers(converted), "float_islands": float_islands(converted),
    }
    if method == "qat":
        metrics["qat_config"] = {k: getattr(qat_config, k)
                                 for k in qat_config.__dataclass_fields__}
    else:
        metrics["calib_images"] = min(len(train_items), calib_batches * batch_size)
        metrics["ptq_methods"] = converted.meta.get("ptq", {})
    metadata = ArtifactMetadata(preprocessing=preprocessing, model=model_config.model,
                                precision="int8",
                                extra={"quantization": {"method": method, **config.to_dict()}})
    if distributed.world_size() > 1 and method == "qat":
        metrics["processes"] = distributed.world_size()
    if distributed.is_main():
        save_program(Path(out), converted, metadata, example_input=example, metrics=metrics,
                     checkpoint=Path(checkpoint))
    distributed.barrier()  # the other ranks return once the files are there
    return metrics
