"""int8 quantization to the TFLite spec on torchao PT2E: PTQ calibration and QAT.

`quantize(model, example_input, recipe=QAT(...) | PTQ(...), train_data=(x, y))`
returns the converted program: a GraphModule with explicit quantize /
dequantize nodes, the fake-quant reference every exported int8 artifact must
match. `save` / `load` put it on disk as `model_int8.pt2` with its metadata.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx import GraphModule

from edgecnn.distributed import Execution
from edgecnn.errors import EdgecnnError
from edgecnn.quant.annotators import known_ops
from edgecnn.quant.artifact import load_program, save_program, to_program
from edgecnn.quant.calibrate import calibrate, convert, prepare_ptq, ptq
from edgecnn.quant.graph import qdq_counts, weighted_ops
from edgecnn.quant.qat import prepare_qat, qat, qat_finetune
from edgecnn.quant.quantizer import TFLiteInt8Quantizer, UnquantizedOpWarning
from edgecnn.quant.recipe import PTQ, QAT, QAT_SCHEDULE, Recipe
from edgecnn.quant.spec import OBSERVERS, QuantConfig

#: the recipes by their CLI name
METHODS = {"qat": QAT, "ptq": PTQ}


def quantize(model: nn.Module, example_input: torch.Tensor, recipe: Recipe = QAT(), *,
             train_data, config: QuantConfig | None = None, show_progress: bool = False,
             execution: Execution | None = None) -> GraphModule:
    """Quantize an fp32 model (left unchanged) to the TFLite int8 spec.

    example_input: a batch (>= 2) of model inputs, used to capture the graph.
    recipe: `PTQ(...)` (calibration, with its optional steps) or `QAT(...)` (fine-tuning
    with fake quantization); each holds only the options its method uses.
    train_data: (x, y) preprocessed training tensors, or a torch Dataset of (CHW tensor,
    label) items (`edgecnn.data.loader.ImageDataset`: decoded a batch at a time); PTQ
    needs only the inputs (x alone will do). config: what the quantizer emits (the int8
    spec, float and int16 layers). execution: QAT's device and loader workers
    (`edgecnn.distributed`; under torchrun, DistributedDataParallel).
    Raises EdgecnnError for a recipe of another type, train_data of another form or of
    another CHW shape than example_input, or QAT without labels.
    """
    if not isinstance(recipe, (PTQ, QAT)):
        raise EdgecnnError(f"recipe must be PTQ(...) or QAT(...), got {recipe!r}"[:200])
    if isinstance(train_data, torch.Tensor):
        x, y = train_data, None
    elif isinstance(train_data, (tuple, list)):
        if len(train_data) != 2 or not isinstance(train_data[0], torch.Tensor):
            raise EdgecnnError(f"train_data must be x, (x, y) tensors or a Dataset of (input, "
                               f"label) items, got a {type(train_data).__name__} of "
                               f"{len(train_data)}")
        x, y = train_data
    else:
        x = y = train_data  # a Dataset of (input, label) items
    first = x if isinstance(x, torch.Tensor) else _first_input(x)
    if isinstance(first, torch.Tensor) and first.dim() >= 3 and example_input.dim() == 4 \
            and tuple(first.shape[-3:]) != tuple(example_input.shape[1:]):
        raise EdgecnnError(f"train_data inputs are {tuple(first.shape[-3:])}, example_input "
                           f"{tuple(example_input.shape[1:])} (CHW)")
    if isinstance(recipe, PTQ):
        return ptq(model, example_input, x, config=config, recipe=recipe,
                   show_progress=show_progress)
    if y is None:
        raise EdgecnnError("QAT needs labelled training data: train_data=(x, y)")
    data = train_data if y is x else (x, y)
    return qat(model, example_input, data, config=config, recipe=recipe,
               show_progress=show_progress, execution=execution)


def _first_input(dataset) -> torch.Tensor | None:
    """The first item's input of a map-style Dataset, None when it has no items or indexing."""
    try:
        return dataset[0][0] if len(dataset) else None
    except (TypeError, IndexError, KeyError):
        return None


__all__ = ["METHODS", "OBSERVERS", "PTQ", "QAT", "QAT_SCHEDULE", "QuantConfig", "Recipe",
           "TFLiteInt8Quantizer", "UnquantizedOpWarning", "calibrate", "convert",
           "known_ops", "load_program", "prepare_ptq", "prepare_qat", "ptq", "qat", "qat_finetune",
           "qdq_counts", "quantize", "save_program", "to_program", "weighted_ops"]
