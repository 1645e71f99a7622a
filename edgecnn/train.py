"""fp32 training: the reference every int8 artifact is measured against."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from edgecnn import distributed
from edgecnn.config import Preprocessing
from edgecnn.data import Dataset
from edgecnn.data.loader import ImageDataset, as_items, batches, eval_loader, train_loader
from edgecnn.distributed import Execution
from edgecnn.errors import EdgecnnError, ParameterError, first_line
from edgecnn.flags import check_fields
from edgecnn.preprocess import prepare
from edgecnn.progress import console, progress_bar
from edgecnn.util import traced_frame

OPTIMIZERS = ("adamw", "sgd")
_NOTED: set[str] = set()  # the memory-format notes printed by this process


@dataclass(frozen=True)
class TrainConfig:
    """An fp32 schedule: optimizer, cosine learning rate, optional label smoothing.

    Fine-tuning a pretrained backbone under a new head (`train(..., head=PREFIX)`):
    the first `freeze_epochs` of the `epochs` train the head only (the backbone's
    weights and BatchNorm statistics stay as loaded), then everything trains, the
    backbone at `backbone_lr_factor` x `lr` (each phase its own cosine schedule).
    `epochs=0` trains nothing (pretrained weights used as they are).
    """

    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    freeze_epochs: int = 0
    backbone_lr_factor: float = 0.1

    def __post_init__(self) -> None:
        check_fields(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                     weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                     seed=self.seed, freeze_epochs=self.freeze_epochs,
                     backbone_lr_factor=self.backbone_lr_factor)
        if self.freeze_epochs > self.epochs:
            raise ParameterError("freeze_epochs", f"must be at most {{epochs}} "
                                                  f"({self.epochs}), got {self.freeze_epochs}",
                                 also=("epochs",))
        if self.optimizer not in OPTIMIZERS:
            raise EdgecnnError(f"unknown optimizer {self.optimizer!r}; known: {OPTIMIZERS}")


def default_input_size(dataset: Dataset) -> int:
    """32 px (small-input mode) for images up to 64 px, else 224."""
    return 32 if max(dataset.image_size) <= 64 else 224


def preprocessing_for(dataset: Dataset, input_size: int | None = None,
                      options=None, *, channels: int | None = None) -> Preprocessing:
    """The record of a new model (`data.preprocessing.choose_preprocessing`; `options`:
    its `PreprocessOptions`, the user's --mean/--std/--resize/--interpolation; `channels`:
    the model's input channels, `input_channels`, when not the data's)."""
    from edgecnn.data.preprocessing import choose_preprocessing

    return choose_preprocessing(dataset, input_size or default_input_size(dataset), options,
                                channels=channels)


def factory_options(num_classes: int, channels: int, input_size: int,
                    width_mult: float = 1.0) -> dict:
    """The keyword options a model factory is offered (`create_model` passes those it takes)."""
    return {"num_classes": num_classes, "in_channels": channels, "width_mult": width_mult,
            "small_input": input_size < 96}


def model_options_for(preprocessing: Preprocessing, width_mult: float = 1.0) -> dict:
    """`factory_options` of a model with this preprocessing record."""
    return factory_options(preprocessing.num_classes, preprocessing.channels,
                           max(preprocessing.input_size), width_mult)


class _FirstConv(Exception):
    """Raised by the hook of `input_channels` at the first convolution the forward runs."""


def input_channels(model: nn.Module, channels: int, input_size: int) -> tuple[int, str]:
    """(channels, layer): the input channels of `model`'s first convolution (nn.Conv1d /
    nn.Conv2d, the first the forward runs on a [1, `channels`, size, size] batch) and its
    name, when the batch reaches it with its `channels` unchanged; else (`channels`, "").
    A forward that fails before any convolution says nothing here
    (`preflight.check_interface` reports it). `model`'s mode is restored."""
    seen: list[tuple[int, str]] = []
    training = model.training
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() > 1 and x.shape[1] == channels:
            seen.append((module.in_channels, names[module]))
        raise _FirstConv

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, input_size, input_size))
    except Exception:  # noqa: BLE001 - _FirstConv, or the model's own failure (reported later)
        pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return seen[0] if seen else (channels, "")


def to_tensors(images: np.ndarray, labels: np.ndarray,
               preprocessing: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> the model's float input (NCHW), via the runtime's own preprocessing."""
    x = prepare(images, preprocessing.with_layout("NCHW"))
    return torch.from_numpy(x), torch.from_numpy(np.asarray(labels, np.int64))


def _phases(model: nn.Module, config: TrainConfig, lr: float,
            head: str | None) -> list[tuple[int, list[dict], bool]]:
    """[(epochs, optimizer param groups, backbone frozen)] of the schedule."""
    if head is None:
        return [(config.epochs, [{"params": list(model.parameters()), "lr": lr}], False)]
    named = list(model.named_parameters())
    head_params = [p for n, p in named if n.startswith(head)]
    backbone = [p for n, p in named if not n.startswith(head)]
    if not head_params:
        raise EdgecnnError(f"the model has no parameters under {head!r} (the head to train)")
    phases = []
    if config.freeze_epochs:
        phases.append((config.freeze_epochs, [{"params": head_params, "lr": lr}], True))
    if config.epochs > config.freeze_epochs:
        phases.append((config.epochs - config.freeze_epochs,
                       [{"params": backbone, "lr": lr * config.backbone_lr_factor},
                        {"params": head_params, "lr": lr}], False))
    return phases


@torch.no_grad()
def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             y: torch.Tensor) -> float:
    """Top-1 accuracy as a fraction in [0, 1]: correct / images, exact in float64 (as
    `evaluate` and `validate` give it)."""
    return int((predict_logits(model, x).argmax(1) == y).sum()) / max(len(y), 1)


def make_optimizer(params, config: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov, momentum 0.9) over `params` (tensors or param groups)."""
    lr = lr or config.lr
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay,
                               nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def _to_device(batch: torch.Tensor, device: torch.device,
               memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    return batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)


def _forward_error(model: nn.Module, x: torch.Tensor) -> Exception | None:
    """The exception one forward of `x` raises, else None; no gradients, and the buffers
    it wrote (BN statistics, QAT's observer ranges) restored."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001 - the user's code: whatever it raises
        return exc
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved:  # resized: an observer's first range
                    buffer.resize_(saved[name].shape).copy_(saved[name])
    return None


def _user_line(exc: BaseException, model: nn.Module) -> str:
    """`file.py:12 <code>` of the user's line `exc` came from (the last frame outside torch
    and edgecnn; for a torch.export graph, the line its node was traced from), else ""."""
    skip = (str(Path(torch.__file__).parent), str(Path(__file__).parent))
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith("<eval_with_key>") and isinstance(model, fx.GraphModule):
            name = (frame.line or "").split(" = ")[0].strip()
            node = next((n for n in model.graph.nodes if n.name == name), None)
            traced = traced_frame(node.meta.get("stack_trace") or "") if node is not None else None
            if traced:
                return f"{traced[0]}:{traced[1]} {traced[2]}"
        elif not frame.filename.startswith(("<", *skip)):
            return f"{Path(frame.filename).name}:{frame.lineno} {(frame.line or '').strip()}"
    return ""


def memory_format(model: nn.Module, example: torch.Tensor) -> tuple[torch.memory_format, str]:
    """(format, note): the memory format to train `model` in, with `model` converted to it.

    channels_last runs mobile convs (depthwise above all) ~1.7x faster on CPU, so it is
    the choice when one train-mode forward of `example` (a small batch on the model's
    device) runs in it. A valid model that needs contiguous tensors (`x.view(x.size(0),
    -1)` after a pool) trains in NCHW instead, and `note` says so, naming its line; a
    model that fails in NCHW too keeps channels_last (its error comes in training). The
    forward changes no weight or buffer; `model` is left in train mode."""
    model.train().to(memory_format=torch.channels_last)
    exc = _forward_error(model, example.contiguous(memory_format=torch.channels_last))
    if exc is None:
        return torch.channels_last, ""
    model.to(memory_format=torch.contiguous_format)
    if _forward_error(model, example.contiguous()) is not None:
        model.to(memory_format=torch.channels_last)
        return torch.channels_last, ""
    line = _user_line(exc, model)
    hint = "; x.reshape or x.flatten(1) allows it" if "view" in str(exc) else ""
    what = (f"{line} needs contiguous tensors" if line else
            f"the model fails on channels_last tensors ({type(exc).__name__}: "
            f"{first_line(exc)})")
    return torch.contiguous_format, (f"note: {what}: training in NCHW (channels_last is ~1.7x "
                                     f"faster for depthwise convs{hint})")


def run_epochs(model: nn.Module, data, config: TrainConfig, *, description: str,
               lr: float | None = None,
               on_epoch_start: Callable[[nn.Module, int], None] | None = None,
               show_progress: bool = True, head: str | None = None,
               execution: Execution | None = None) -> list[dict]:
    """Train with a per-step cosine schedule; return per-epoch loss and train accuracy.

    data: a torch Dataset of (float CHW tensor, int label) items (`data.loader.
    ImageDataset`: decoded per batch in the loader's workers) or `(x, y)` tensors.
    Batches come from `data.loader.train_loader` (augmented there when
    `config.augment`). Under torchrun the model trains as DistributedDataParallel on
    `execution.device`, each rank reading its share of every global batch of
    `config.batch_size` images; the history's loss and accuracy are summed over the
    ranks. The model is back on the CPU when this returns, with rank 0's buffers.
    `on_epoch_start(model, epoch)` lets QAT freeze BN statistics and observers.
    `head`: the state_dict prefix of a new classifier on a pretrained backbone; the
    schedule then has the phases `TrainConfig` describes (head only, then all).
    The memory format is `memory_format`'s choice (channels_last unless the model needs
    contiguous tensors; its note printed once a process, with `show_progress`).
    Raises `ParameterError` ("batch_size") when the processes cannot split a batch.
    """
    execution = execution or Execution()
    device = distributed.setup(execution.device)
    items = as_items(data)
    workers = (distributed.default_workers(getattr(items, "images", items))
               if execution.workers is None else execution.workers)
    loader, sampler = train_loader(items, batch_size=distributed.per_rank_batch(config.batch_size),
                                   seed=config.seed, augment=config.augment, workers=workers,
                                   rank=distributed.rank(), world_size=distributed.world_size(),
                                   pin_memory=device.type == "cuda")
    model.to(device=device)
    example = torch.stack([items[0][0]] * 2).to(device)
    layout, note = memory_format(model, example)
    if note and show_progress and distributed.is_main() and note not in _NOTED:
        _NOTED.add(note)
        console.print(note, highlight=False, soft_wrap=True, markup=False)
    torch.manual_seed(config.seed)
    steps_per_epoch = len(loader)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history: list[dict] = []
    frozen_bns = [] if head is None else [
        m for n, m in model.named_modules() if not (n + ".").startswith(head)
        and isinstance(m, nn.modules.batchnorm._BatchNorm)]
    backbone = [] if head is None else [p for n, p in model.named_parameters()
                                        if not n.startswith(head) and p.requires_grad]
    show_progress = show_progress and distributed.is_main()
    with progress_bar(description, total=config.epochs * steps_per_epoch,
                      enabled=show_progress) as bar:
        for phase_epochs, groups, frozen in _phases(model, config, lr or config.lr, head):
            for p in backbone:
                p.requires_grad_(not frozen)
            trained = distributed.wrap(model, device)  # per phase: its trainable parameters
            optimizer = make_optimizer(groups, config, lr)
            total = phase_epochs * steps_per_epoch
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step, total=total: 0.5 * (1 + math.cos(math.pi * step / total)))
            for _ in range(phase_epochs):
                epoch = len(history)
                if on_epoch_start:
                    on_epoch_start(model, epoch)
                model.train()
                for module in frozen_bns if frozen else []:
                    module.eval()  # the backbone as loaded: BN statistics too
                sampler.set_epoch(epoch)
                seen = correct = 0
                loss_sum = 0.0
                for xb, yb in batches(loader):
                    xb, yb = _to_device(xb, device, layout), yb.to(device, non_blocking=True)
                    logits = trained(xb)
                    loss = loss_fn(logits, yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    seen += len(yb)
                    loss_sum += float(loss.detach()) * len(yb)
                    correct += int((logits.argmax(1) == yb).sum())
                    bar.advance(f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / seen:.3f} "
                                f"acc {correct / seen:.3f}" + (" (head only)" if frozen else ""))
                loss_sum, correct, seen = distributed.all_reduce_sums(
                    [loss_sum, correct, seen])
                history.append({"epoch": epoch + 1, "loss": loss_sum / seen,
                                "train_accuracy": correct / seen, "head_only": frozen})
    for p in backbone:
        p.requires_grad_(True)
    distributed.sync_buffers(model)
    model.to("cpu")
    return history


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], data, *,
             execution: Execution | None = None, batch_size: int = 256,
             device: str | None = None) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of `model` on `data` (as `run_epochs`
    takes it), read through the loader a batch at a time; under torchrun each rank
    predicts its share and the counts are summed. `device` overrides `execution.device`
    for the computation (the int8 program is measured on the CPU). The model is left
    on the CPU."""
    execution = execution or Execution()
    target = distributed.setup(execution.device)
    if device is not None:
        target = distributed.resolve_device(device)
    items = as_items(data)
    workers = (distributed.default_workers(getattr(items, "images", items))
               if execution.workers is None else execution.workers)
    loader = eval_loader(items, batch_size=batch_size, workers=workers,
                         rank=distributed.rank(), world_size=distributed.world_size())
    model.to(target)
    correct = seen = 0
    for xb, yb in batches(loader):
        correct += int((model(xb.to(target)).argmax(1).cpu() == yb).sum())
        seen += len(yb)
    model.to("cpu")
    correct, seen = distributed.all_reduce_sums([correct, seen])
    return correct / max(seen, 1)


def train(model: nn.Module, dataset: Dataset, preprocessing: Preprocessing,
          config: TrainConfig | None = None, *, show_progress: bool = True,
          head: str | None = None, execution: Execution | None = None) -> dict:
    """Train `model` in place on `dataset`; return metrics (val_accuracy is a fraction).

    The images are decoded and preprocessed a batch at a time (`data.loader`), never
    all at once. `head`: fine-tune a pretrained backbone under this new classifier
    (state_dict prefix; see `TrainConfig` for the phases). `execution`: device and
    loader workers (`edgecnn.distributed`; under torchrun, DistributedDataParallel).
    """
    if preprocessing.num_classes != dataset.num_classes:
        raise EdgecnnError(f"the preprocessing record has {preprocessing.num_classes} classes, "
                           f"the dataset {dataset.num_classes}")
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    train_items = ImageDataset(dataset.train_images, dataset.train_labels, preprocessing)
    val_items = ImageDataset(dataset.val_images, dataset.val_labels, preprocessing)
    start = time.perf_counter()
    history = run_epochs(model, train_items, config, description="train",
                         show_progress=show_progress, head=head,
                         execution=execution) if config.epochs else []
    seconds = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format).eval()
    return {"val_accuracy": evaluate(model, val_items, execution=execution),
            "train_seconds": round(seconds, 2), "epochs": config.epochs, "history": history,
            "train_config": asdict(config), "train_images": len(train_items),
            "val_images": len(val_items)}
