"""Quantization-aware fine-tuning from an fp32 model (the standard recipe).

prepare_qat_pt2e from a train-mode capture (conv + BN becomes torchao's
simulated fold), fine-tune a few epochs with a small learning rate and a
cosine schedule (`edgecnn.train.run_epochs`), freeze BN statistics and then
the observers after configurable fractions of the epochs, convert.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx import GraphModule
from torchao.quantization.pt2e import disable_observer
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

from edgecnn.distributed import Execution
from edgecnn.quant.bn_fold import (
    enable_train_eval,
    fold_batch_norms,
    freeze_bn_stats,
    multiply_by_reciprocal,
)
from edgecnn.quant.calibrate import capture, convert
from edgecnn.quant.quantizer import TFLiteInt8Quantizer
from edgecnn.quant.recipe import QAT
from edgecnn.quant.spec import QuantConfig
from edgecnn.train import run_epochs


def prepare_qat(model: nn.Module, example_input: torch.Tensor,
                config: QuantConfig | None = None) -> GraphModule:
    """Capture in train mode, annotate, insert fake-quantize; `.train()/.eval()` allowed."""
    prepared = prepare_qat_pt2e(capture(model, example_input, train=True),
                                TFLiteInt8Quantizer(config, is_qat=True))
    multiply_by_reciprocal(prepared)
    return enable_train_eval(prepared)


def qat_finetune(prepared: GraphModule, data, recipe: QAT = QAT(), *,
                 show_progress: bool = False, execution: Execution | None = None) -> list[dict]:
    """Fine-tune a `prepare_qat` model in place; return run_epochs' per-epoch history.

    data: as `edgecnn.train.run_epochs` takes it (a torch Dataset of (CHW tensor, label)
    items, read a batch at a time, or `(x, y)` tensors). Under torchrun the prepared
    graph trains as DistributedDataParallel: gradients are averaged, and the buffers
    (BN statistics, the fake-quantize observers' ranges and their enable flags, uint8
    buffers for this reason in torchao) are broadcast from rank 0 at every step, so every
    rank fake-quantizes with the same parameters; the observers see rank 0's shard.
    """
    bn_epoch = recipe.freeze_epoch(recipe.freeze_bn_fraction)
    observer_epoch = max(1, recipe.freeze_epoch(recipe.freeze_observer_fraction))

    def on_epoch_start(model: nn.Module, epoch: int) -> None:
        if epoch == bn_epoch:
            freeze_bn_stats(model)
        if epoch == observer_epoch:
            model.apply(disable_observer)

    return run_epochs(prepared, data, recipe.train, description="qat",
                      on_epoch_start=on_epoch_start, show_progress=show_progress,
                      execution=execution)


def qat(model: nn.Module, example_input: torch.Tensor, data, *,
        config: QuantConfig | None = None, recipe: QAT = QAT(),
        show_progress: bool = False, execution: Execution | None = None) -> GraphModule:
    """Quantization-aware training: prepare, fine-tune on `data` as `recipe` says (see
    `qat_finetune`), convert."""
    prepared = prepare_qat(model, example_input, config)
    qat_finetune(prepared, data, recipe, show_progress=show_progress, execution=execution)
    prepared.eval()
    fold_batch_norms(prepared)
    return convert(prepared)
