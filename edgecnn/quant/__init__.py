"""int8 quantization to the TFLite spec on torchao PT2E: PTQ calibration and QAT.

`quantize(model, example_input, method="qat" | "ptq", train_data=(x, y))`
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
from edgecnn.quant.artifact import load_program, save_program, to_program
from edgecnn.quant.calibrate import calibrate, convert, prepare_ptq, ptq
from edgecnn.quant.graph import qdq_counts, weighted_ops
from edgecnn.quant.qat import QATConfig, prepare_qat, qat, qat_finetune
from edgecnn.quant.quantizer import TFLiteInt8Quantizer, UnquantizedOpWarning
from edgecnn.quant.spec import OBSERVERS, QuantConfig

METHODS = ("qat", "ptq")


def quantize(model: nn.Module, example_input: torch.Tensor, method: str = "qat", *,
             train_data, config: QuantConfig | None = None,
             qat_config: QATConfig | None = None, calib_batches: int = 32,
             batch_size: int = 64, seed: int = 0, show_progress: bool = False,
             execution: Execution | None = None) -> GraphModule:
    """Quantize an fp32 model (left unchanged) to the TFLite int8 spec.

    example_input: a batch (>= 2) of model inputs, used to capture the graph.
    train_data: (x, y) preprocessed training tensors, or a torch Dataset of (CHW tensor,
    label) items (`edgecnn.data.loader.ImageDataset`: decoded a batch at a time); PTQ
    needs only the inputs (x alone will do). execution: QAT's device and loader
    workers (`edgecnn.distributed`; under torchrun, DistributedDataParallel).
    """
    if method not in METHODS:
        raise EdgecnnError(f"unknown quantization method {method!r}; known: {METHODS}")
    if isinstance(train_data, torch.Tensor):
        x, y = train_data, None
    elif isinstance(train_data, (tuple, list)):
        x, y = train_data
    else:
        x = y = train_data  # a Dataset of (input, label) items
    if method == "ptq":
        return ptq(model, example_input, x, config=config, batches=calib_batches,
                   batch_size=batch_size, seed=seed, show_progress=show_progress)
    if y is None:
        raise EdgecnnError("QAT needs labelled training data: train_data=(x, y)")
    data = train_data if y is x else (x, y)
    return qat(model, example_input, data, config=config,
               qat_config=qat_config or QATConfig(), show_progress=show_progress,
               execution=execution)


__all__ = ["METHODS", "OBSERVERS", "QATConfig", "QuantConfig", "TFLiteInt8Quantizer",
           "UnquantizedOpWarning", "calibrate", "convert", "load_program", "prepare_ptq",
           "prepare_qat", "ptq", "qat", "qat_finetune", "qdq_counts", "quantize", "save_program",
           "to_program", "weighted_ops"]
