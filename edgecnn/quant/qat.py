"""Quantization-aware fine-tuning from an fp32 model (the standard recipe).

prepare_qat_pt2e from a train-mode capture (conv + BN becomes torchao's
simulated fold), fine-tune a few epochs with a small learning rate and a
cosine schedule (`edgecnn.train.run_epochs`), freeze BN statistics and then
the observers after configurable fractions of the epochs, convert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.fx import GraphModule
from torchao.quantization.pt2e import disable_observer
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

from edgecnn.distributed import Execution
from edgecnn.errors import EdgecnnError
from edgecnn.quant.bn_fold import (
    enable_train_eval,
    fold_batch_norms,
    freeze_bn_stats,
    multiply_by_reciprocal,
)
from edgecnn.quant.calibrate import capture, convert
from edgecnn.quant.quantizer import TFLiteInt8Quantizer
from edgecnn.quant.spec import QuantConfig, check_ptq_methods
from edgecnn.train import TrainConfig, run_epochs


@dataclass(frozen=True)
class QATConfig:
    """A QAT fine-tuning schedule.

    freeze_bn_fraction / freeze_observer_fraction: the share of the epochs after
    which BN statistics / activation and weight ranges stop updating (1.0: never;
    BN 0.0: from the start, so training sees exactly the folded, deployed function).
    """

    epochs: int = 3
    lr: float = 3e-5
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    augment: bool = True
    freeze_bn_fraction: float = 0.5
    freeze_observer_fraction: float = 0.67
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise EdgecnnError(f"QAT epochs must be at least 1, got {self.epochs!r}")
        if not 0.0 <= self.freeze_bn_fraction <= 1.0:
            raise EdgecnnError(f"freeze_bn_fraction must be in [0, 1], got "
                               f"{self.freeze_bn_fraction}")
        if not 0.0 < self.freeze_observer_fraction <= 1.0:  # ranges need data first
            raise EdgecnnError(f"freeze_observer_fraction must be in (0, 1], got "
                               f"{self.freeze_observer_fraction}")
        self.train_config()  # validates epochs, lr, batch size, optimizer

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           optimizer=self.optimizer, weight_decay=self.weight_decay,
                           augment=self.augment, seed=self.seed)

    def freeze_epoch(self, fraction: float) -> int:
        """First (0-based) epoch run frozen; `epochs` means never."""
        return min(self.epochs, round(fraction * self.epochs))


def prepare_qat(model: nn.Module, example_input: torch.Tensor,
                config: QuantConfig | None = None) -> GraphModule:
    """Capture in train mode, annotate, insert fake-quantize; `.train()/.eval()` allowed.

    Raises ParameterError for a config asking for PTQ steps (`cle`, `bias_correction`):
    QAT learns the weights and BN folds during training, neither applies as written.
    """
    check_ptq_methods(config, "qat")
    prepared = prepare_qat_pt2e(capture(model, example_input, train=True),
                                TFLiteInt8Quantizer(config, is_qat=True))
    multiply_by_reciprocal(prepared)
    return enable_train_eval(prepared)


def qat_finetune(prepared: GraphModule, data, config: QATConfig = QATConfig(), *,
                 show_progress: bool = False, execution: Execution | None = None) -> list[dict]:
    """Fine-tune a `prepare_qat` model in place; return run_epochs' per-epoch history.

    data: as `edgecnn.train.run_epochs` takes it (a torch Dataset of (CHW tensor, label)
    items, read a batch at a time, or `(x, y)` tensors). Under torchrun the prepared
    graph trains as DistributedDataParallel: gradients are averaged, and the buffers
    (BN statistics, the fake-quantize observers' ranges and their enable flags, uint8
    buffers for this reason in torchao) are broadcast from rank 0 at every step, so every
    rank fake-quantizes with the same parameters; the observers see rank 0's shard.
    """
    bn_epoch = config.freeze_epoch(config.freeze_bn_fraction)
    observer_epoch = max(1, config.freeze_epoch(config.freeze_observer_fraction))

    def on_epoch_start(model: nn.Module, epoch: int) -> None:
        if epoch == bn_epoch:
            freeze_bn_stats(model)
        if epoch == observer_epoch:
            model.apply(disable_observer)

    return run_epochs(prepared, data, config.train_config(), description="qat",
                      on_epoch_start=on_epoch_start, show_progress=show_progress,
                      execution=execution)


def qat(model: nn.Module, example_input: torch.Tensor, data, *,
        config: QuantConfig | None = None, qat_config: QATConfig = QATConfig(),
        show_progress: bool = False, execution: Execution | None = None) -> GraphModule:
    """Quantization-aware training: prepare, fine-tune on `data` (see `qat_finetune`),
    convert."""
    prepared = prepare_qat(model, example_input, config)
    qat_finetune(prepared, data, qat_config, show_progress=show_progress, execution=execution)
    prepared.eval()
    fold_batch_norms(prepared)
    return convert(prepared)
