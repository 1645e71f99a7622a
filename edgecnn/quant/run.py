"""`edgecnn quantize`: fp32 checkpoint -> int8 program, with accuracy measured on both.

Loads the checkpoint and its data (same seeded split as training), quantizes,
measures fp32 and int8 validation accuracy, and writes model_int8.pt2,
metrics.json and config.json (see `edgecnn.quant.artifact`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from edgecnn import distributed
from edgecnn.checkpoint import load_checkpoint
from edgecnn.config import ArtifactMetadata
from edgecnn.data import load as load_data
from edgecnn.data.loader import ImageDataset
from edgecnn.distributed import Execution
from edgecnn.errors import ParameterError
from edgecnn.quant import quantize
from edgecnn.quant.artifact import save_program
from edgecnn.quant.graph import qdq_counts
from edgecnn.quant.precision import (
    float_islands,
    float_layers,
    int8_layers,
    int16_capable_ops,
    int16_layers,
    int16_ops,
)
from edgecnn.quant.recipe import PTQ, QAT, Recipe
from edgecnn.quant.spec import QuantConfig
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


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_checkpoint` measured and chose; `to_dict()` is metrics.json.

    fp32_accuracy / int8_accuracy: top-1 (fraction) of the checkpoint and of the int8
    program on the seeded validation split, in torch; accuracy_drop: in points.
    quant_config: `QuantConfig.to_dict()`; node_counts: quantize / dequantize nodes.
    float_layers / int8_layers / int16_layers: layer names by precision
    (`edgecnn.quant.precision`); int16_ops: the other ops running 16x8 (node names:
    pools, adds, means); int16_capable_ops: the int8 ones `--int16` could move;
    float_islands: ops left float for want of an int8 kernel. QAT: qat_config (the
    recipe); PTQ: calib_images and ptq_methods (what CLE and bias correction did).
    processes: the torchrun world size of a distributed QAT.
    """

    model: str
    data: str
    method: str
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_drop: float
    val_images: int
    quantize_seconds: float
    quant_config: dict
    node_counts: dict
    float_layers: list[str]
    int8_layers: list[str]
    int16_layers: list[str]
    int16_ops: list[str]
    int16_capable_ops: list[str]
    float_islands: list[str]
    qat_config: dict | None = None
    calib_images: int | None = None
    ptq_methods: dict | None = None
    processes: int | None = None

    def to_dict(self) -> dict:
        return json.loads(json.dumps({k: v for k, v in self.__dict__.items() if v is not None}))

    @classmethod
    def from_dict(cls, data: dict) -> QuantizeResult:
        """From metrics.json (fields it lacks: empty lists / None)."""
        lists = ("float_layers", "int8_layers", "int16_layers", "int16_ops",
                 "int16_capable_ops", "float_islands")
        return cls(**{k: data.get(k, [] if k in lists else None)
                      for k in cls.__dataclass_fields__})

    @property
    def int16_names(self) -> list[str]:
        """The int16 layers (module paths) and ops (node names): what `--fallback int16`
        moved."""
        return [*self.int16_layers, *self.int16_ops]


def quantize_checkpoint(checkpoint: Path, out: Path, recipe: Recipe | None = None, *,
                        data: str | None = None, model_name: str | None = None,
                        config: QuantConfig | None = None, seed: int | None = None,
                        show_progress: bool = True,
                        execution: Execution | None = None) -> QuantizeResult:
    """Quantize the checkpoint in `checkpoint` to `out` as `recipe` says; return what
    was measured (metrics.json).

    recipe: `PTQ(...)` or `QAT(...)` (`edgecnn.quant.recipe`); None is `QAT()` seeded
    with the checkpoint's training seed, and a PTQ recipe without a seed calibrates in
    an order drawn from it. seed: the data split's seed (default: the training seed).
    The images are decoded a batch at a time (`edgecnn.data.loader`). Under torchrun,
    QAT trains as DistributedDataParallel (`execution`: device, loader workers), the
    accuracies are measured on every rank's share and summed, and rank 0 alone writes
    `out` (the others wait for it); PTQ calibrates the same images on every rank.
    Raises ParameterError naming `recipe` or `data`.
    """
    if recipe is not None and not isinstance(recipe, (PTQ, QAT)):
        raise ParameterError("recipe", f"must be PTQ(...) or QAT(...), got {recipe!r}"[:200])
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
    if recipe is None:
        recipe = QAT(train=replace(QAT().train, seed=split_seed))
    elif isinstance(recipe, PTQ) and recipe.seed is None:
        recipe = replace(recipe, seed=split_seed)

    fp32_accuracy = evaluate(model, val_items, execution=execution)
    start = time.perf_counter()
    converted = quantize(model, example, recipe, train_data=train_items, config=config,
                         show_progress=show_progress and distributed.is_main(),
                         execution=execution)
    seconds = time.perf_counter() - start
    int8_accuracy = evaluate(converted, val_items, execution=execution, device="cpu")

    ptq = isinstance(recipe, PTQ)
    result = QuantizeResult(
        model=model_config.model, data=spec, method=recipe.method,
        fp32_accuracy=fp32_accuracy, int8_accuracy=int8_accuracy,
        accuracy_drop=round(100.0 * (fp32_accuracy - int8_accuracy), 4),
        val_images=len(val_items), quantize_seconds=round(seconds, 2),
        quant_config=config.to_dict(), node_counts=qdq_counts(converted),
        float_layers=float_layers(converted), int8_layers=int8_layers(converted),
        int16_layers=int16_layers(converted), int16_ops=int16_ops(converted),
        int16_capable_ops=int16_capable_ops(converted), float_islands=float_islands(converted),
        qat_config=None if ptq else recipe.to_dict(),
        calib_images=min(len(train_items), recipe.calib_batches * recipe.batch_size)
        if ptq else None,
        ptq_methods=converted.meta.get("ptq", {}) if ptq else None,
        processes=distributed.world_size() if distributed.world_size() > 1 and not ptq
        else None)
    metadata = ArtifactMetadata(preprocessing=preprocessing, model=model_config.model,
                                precision="int8",
                                extra={"quantization": {
                                    "method": recipe.method, **config.to_dict(),
                                    **{step: True for step in recipe.steps}}})
    if distributed.is_main():
        save_program(Path(out), converted, metadata, example_input=example,
                     metrics=result.to_dict(), checkpoint=Path(checkpoint))
    distributed.barrier()  # the other ranks return once the files are there
    return result
