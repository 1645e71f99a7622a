"""fp32 training: the reference every int8 artifact is measured against."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.config import Preprocessing
from edgecnn.data import Dataset
from edgecnn.errors import EdgecnnError
from edgecnn.progress import progress_bar
from edgecnn.runtime.preprocess import prepare

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """An fp32 schedule: optimizer, cosine learning rate, optional label smoothing."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise EdgecnnError("epochs and batch size must be at least 1")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise EdgecnnError(f"learning rate must be positive and finite, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:  # also false for NaN
            raise EdgecnnError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise EdgecnnError(f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise EdgecnnError(f"unknown optimizer {self.optimizer!r}; known: {OPTIMIZERS}")


def default_input_size(dataset: Dataset) -> int:
    """32 px (small-input mode) for images up to 64 px, else 224."""
    return 32 if max(dataset.image_size) <= 64 else 224


def preprocessing_for(dataset: Dataset, input_size: int | None = None,
                      options=None) -> Preprocessing:
    """The record of a new model (`data.preprocessing.choose_preprocessing`; `options`:
    its `PreprocessOptions`, the user's --mean/--std/--resize/--interpolation)."""
    from edgecnn.data.preprocessing import choose_preprocessing

    return choose_preprocessing(dataset, input_size or default_input_size(dataset), options)


def model_options_for(preprocessing: Preprocessing, width_mult: float = 1.0) -> dict:
    return {"num_classes": preprocessing.num_classes, "in_channels": preprocessing.channels,
            "width_mult": width_mult, "small_input": max(preprocessing.input_size) < 96}


def to_tensors(images: np.ndarray, labels: np.ndarray,
               preprocessing: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> the model's float input (NCHW), via the runtime's own preprocessing."""
    x = prepare(images, preprocessing.with_layout("NCHW"))
    return torch.from_numpy(x), torch.from_numpy(np.asarray(labels, np.int64))


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/8 of the image size (pad by replication, crop)."""
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator)
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             y: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    return float((predict_logits(model, x).argmax(1) == y).float().mean())


def make_optimizer(params, config: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    lr = lr or config.lr
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay,
                               nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def run_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, *,
               description: str, lr: float | None = None,
               on_epoch_start: Callable[[nn.Module, int], None] | None = None,
               show_progress: bool = True) -> list[dict]:
    """Train with a per-step cosine schedule; return per-epoch loss and train accuracy.

    `on_epoch_start(model, epoch)` lets QAT freeze BN statistics and observers.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # channels_last runs mobile convs (depthwise above all) ~1.7x faster on CPU
    model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), config, lr)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history = []
    with progress_bar(description, total=total, enabled=show_progress) as bar:
        for epoch in range(config.epochs):
            if on_epoch_start:
                on_epoch_start(model, epoch)
            model.train()
            order = torch.randperm(len(x), generator=generator)
            seen = correct = 0
            loss_sum = 0.0
            for start in range(0, len(x), config.batch_size):
                idx = order[start:start + config.batch_size]
                xb, yb = x[idx], y[idx]
                if config.augment:
                    xb = random_shift(xb, generator).contiguous(memory_format=torch.channels_last)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                seen += len(idx)
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                bar.advance(f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / seen:.3f} "
                            f"acc {correct / seen:.3f}")
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen,
                            "train_accuracy": correct / seen})
    return history


def train(model: nn.Module, dataset: Dataset, preprocessing: Preprocessing,
          config: TrainConfig | None = None, *, show_progress: bool = True) -> dict:
    """Train `model` in place on `dataset`; return metrics (val_accuracy is a fraction)."""
    if preprocessing.num_classes != dataset.num_classes:
        raise EdgecnnError(f"the preprocessing record has {preprocessing.num_classes} classes, "
                           f"the dataset {dataset.num_classes}")
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    x, y = to_tensors(dataset.train_images, dataset.train_labels, preprocessing)
    vx, vy = to_tensors(dataset.val_images, dataset.val_labels, preprocessing)
    start = time.perf_counter()
    history = run_epochs(model, x, y, config, description="train", show_progress=show_progress)
    seconds = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format).eval()
    return {"val_accuracy": accuracy(model, vx, vy), "train_seconds": round(seconds, 2),
            "epochs": config.epochs, "history": history, "train_config": asdict(config),
            "train_images": len(x), "val_images": len(vx)}
