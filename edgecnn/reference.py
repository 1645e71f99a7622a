"""The fp32 reference stage: `Training` (how a reference is made) -> `train_reference`
-> checkpoint.pt, config.json, metrics.json and a `TrainResult`.

`edgecnn train` runs this stage alone; `edgecnn export --int8` runs it first (or is
given a checkpoint directory instead) and caches it (`edgecnn.pipeline`).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgecnn import distributed
from edgecnn.artifacts import ArtifactConfig
from edgecnn.checkpoint import ModelConfig, save_checkpoint
from edgecnn.data import load
from edgecnn.distributed import Execution
from edgecnn.errors import EdgecnnError
from edgecnn.flags import check_all, check_fields
from edgecnn.models import create_model
from edgecnn.preflight import check_interface
from edgecnn.progress import console
from edgecnn.train import (
    TrainConfig,
    default_input_size,
    factory_options,
    input_channels,
    preprocessing_for,
    train,
)
from edgecnn.util import atomic_write


@dataclass(frozen=True)
class Pretrained:
    """Start from pretrained weights: a .safetensors or tensors-only torch file, mapped
    onto the model by `edgecnn.models.pretrained` (name table, else layer order);
    `drop_background` drops the first row of a classifier with one class too many
    (TensorFlow's 1001-logit heads)."""

    weights: Path
    drop_background: bool = False


@dataclass(frozen=True)
class Training:
    """How an fp32 reference is made.

    schedule: the epochs, optimizer and phases (`edgecnn.train.TrainConfig`); with
        `pretrained`, `schedule.epochs == 0` keeps the weights as they are (refused when
        the classifier had to be replaced).
    input_size: square input side, px (None: 32 for images up to 64 px, else 224).
    width_mult: channel multiplier of the zoo's models.
    pretrained: load these weights first; training then fine-tunes them (the classifier
        is the head of the schedule's phases).
    model_options: `padding` and `bn_eps` (recorded in config.json, as every option);
        without `bn_eps`, BatchNorm epsilon follows the pretrained weights' layout.
    preprocess: `data.preprocessing.PreprocessOptions` (--mean/--std/--resize/...).
    """

    schedule: TrainConfig = TrainConfig()
    input_size: int | None = None
    width_mult: float = 1.0
    pretrained: Pretrained | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    preprocess: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_options", dict(self.model_options or {}))
        check_all(input_size=self.input_size)
        check_fields(width_mult=self.width_mult)


@dataclass(frozen=True)
class TrainResult:
    """What `train_reference` measured; `to_dict()` is metrics.json.

    val_accuracy: top-1 on the seeded validation split (fraction); train_seconds: wall
    time of the epochs; history: one entry per epoch (loss, accuracy, head_only);
    pretrained: file, sha256, layout and classifier fate when weights were loaded;
    processes: the torchrun world size when more than one.
    """

    model: str
    data: str
    val_accuracy: float
    train_seconds: float
    epochs: int
    history: list[dict]
    train_config: dict
    train_images: int
    val_images: int
    processes: int | None = None
    pretrained: dict | None = None

    def to_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if v is not None}
        return json.loads(json.dumps(data))  # a copy: no shared lists


def train_reference(model_name: str, data: str, directory: Path,
                    training: Training = Training(), *, show_progress: bool = True,
                    preflight: str | None = None, artifacts: ArtifactConfig = ArtifactConfig(),
                    quant_config=None, qat: bool = False,
                    execution: Execution | None = None) -> TrainResult:
    """Train the fp32 reference as `training` says and write checkpoint.pt, config.json
    and metrics.json (and pretrained.json when weights were loaded) to `directory`.

    preflight: "error" or "warn" first checks, on the untrained model, that it exports
    to int8 `artifacts` (`edgecnn.preflight`), and raises or warns before any epoch;
    `qat`: the model will be quantized by QAT (its train-mode capture is checked too).
    quant_config: the QuantConfig the model will be quantized with; its layer patterns
    (`--keep-float`) must each match a layer, checked before any epoch (raises).
    execution: device and loader workers (`edgecnn.distributed`); under torchrun every
    rank trains (DistributedDataParallel) and rank 0 alone writes `directory`.
    The model's first convolution sets the input channels of the preprocessing record
    (grey images repeated to RGB, or RGB reduced to luma, when it wants the other).
    Raises EdgecnnError before any training for a bad weights file, a tensor with no
    home, options out of range, a first convolution taking neither 1 nor 3 channels, or
    a model that does not map the images to one [N, classes] logits tensor
    (`preflight.check_interface`).
    """
    from edgecnn.checkpoint import check_options
    from edgecnn.models.pretrained import _classifier, load_pretrained_file, read_weights

    schedule, pretrained = training.schedule, training.pretrained
    extra = check_options(dict(training.model_options))
    if pretrained is None and (schedule.epochs == 0 or schedule.freeze_epochs):
        raise EdgecnnError("epochs=0 and freeze_epochs need pretrained weights (a model "
                           "trained from scratch must train)")
    if pretrained is not None:
        read_weights(pretrained.weights)  # a bad file fails before the data loads
    dataset = load(data, seed=schedule.seed)
    size = training.input_size or default_input_size(dataset)
    options = {**factory_options(dataset.num_classes, dataset.channels, size,
                                 training.width_mult), **extra}
    torch.manual_seed(schedule.seed)  # weight init is part of the seeded run
    model = create_model(model_name, **options)
    options["in_channels"] = _channels(model, model_name, data, dataset.channels, size)
    preprocessing = preprocessing_for(dataset, size, training.preprocess,
                                      channels=options["in_channels"])
    if quant_config is not None:
        check_patterns(model, preprocessing, quant_config)
    loaded = None
    if pretrained is not None:
        loaded = load_pretrained_file(model, pretrained.weights, model_name=model_name,
                                      drop_background=pretrained.drop_background)
        _follow_weights(model, options, "bn_eps" in extra, loaded)
        if show_progress and distributed.is_main():
            for line in loaded.summary():
                console.print(line, highlight=False, soft_wrap=True)
        if schedule.epochs == 0 and loaded.head == "replaced":
            raise EdgecnnError(f"epochs=0 uses the weights as they are, but {loaded.head_note}"
                               ": train at least one epoch")
    check_interface(model, preprocessing, model_name, data)
    if preflight is not None:
        _preflight(model, preprocessing, artifacts, preflight, quant_config, qat)
    measured = train(model, dataset, preprocessing, schedule, show_progress=show_progress,
                     head=_classifier(model) if loaded is not None else None,
                     execution=execution)
    result = TrainResult(
        model=model_name, data=data, **measured,
        processes=distributed.world_size() if distributed.world_size() > 1 else None,
        pretrained=None if loaded is None else {
            "file": str(pretrained.weights), "sha256": loaded.sha256, "layout": loaded.layout,
            "classifier": loaded.head, "classifier_note": loaded.head_note})
    if not distributed.is_main():
        distributed.barrier()  # rank 0 writes; the others return once it has
        return result
    save_checkpoint(Path(directory), model, ModelConfig(model_name, preprocessing, options, data))
    if loaded is not None:
        with atomic_write(Path(directory) / "pretrained.json") as tmp:
            tmp.write_text(json.dumps({"file": str(pretrained.weights), **loaded.to_dict()},
                                      indent=2))
    with atomic_write(Path(directory) / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
    distributed.barrier()
    return result


def _follow_weights(model: torch.nn.Module, options: dict, eps_given: bool, loaded) -> None:
    """BatchNorm epsilon follows the pretrained layout's (set in place and in `options`,
    which config.json records) unless one was given; notes on `loaded` say so, and say
    when the model's padding is not the TF 'SAME' the weights were trained with."""
    from edgecnn.models.padding import set_batchnorm_eps

    source = f"the {loaded.layout} weights"
    eps = options.get("bn_eps", 1e-5)  # the zoo's default
    if loaded.bn_eps is not None and not eps_given and eps != loaded.bn_eps:
        set_batchnorm_eps(model, loaded.bn_eps)
        options["bn_eps"] = loaded.bn_eps
        loaded.notes.append(f"BatchNorm eps {loaded.bn_eps:g}, as {source} were trained")
    elif loaded.bn_eps is not None and eps != loaded.bn_eps:
        loaded.notes.append(f"{source} were trained with BatchNorm eps {loaded.bn_eps:g}; "
                            f"the model's {options['bn_eps']:g} kept, as given")
    if loaded.tf_padding and options.get("padding", "symmetric") != "tf_same":
        loaded.notes.append(f"{source} were trained with TensorFlow 'SAME' padding (bottom / "
                            "right on strided convolutions); the model pads symmetrically "
                            "(--padding tf-same reproduces them)")


def _channels(model: torch.nn.Module, model_name: str, data: str, channels: int,
              size: int) -> int:
    """The input channels of a new model: its first convolution's, when the data's
    `channels` differ and the images convert (grey repeated to RGB, RGB to luma).
    Raises EdgecnnError naming both counts when they do not."""
    wanted, layer = input_channels(model, channels, size)
    if wanted not in (1, 3):
        raise EdgecnnError(f"{model_name}: its first convolution ({layer}) takes {wanted} "
                           f"input channels and the images of {data} have {channels}; edgecnn "
                           "gives a model grey (1 channel) or RGB (3) images")
    return wanted


class PreflightWarning(UserWarning):
    """The model trains, but its export to int8 would fail (named in the message)."""


def check_patterns(model: torch.nn.Module, preprocessing, quant_config) -> None:
    """Every layer pattern of `quant_config` matches a layer of `model` (left unchanged)."""
    from edgecnn.quant.calibrate import check_patterns as check

    h, w = preprocessing.input_size
    check(model, torch.zeros(2, preprocessing.channels, h, w), quant_config)


def _preflight(model: torch.nn.Module, preprocessing, artifacts: ArtifactConfig, mode: str,
               quant_config=None, qat: bool = False) -> None:
    from edgecnn.preflight import check_exportable

    state = copy.deepcopy(model.state_dict())
    try:
        check_exportable(model, preprocessing, formats=artifacts.formats, io=artifacts.io,
                         config=quant_config, qat=qat)
    except EdgecnnError as exc:
        if mode == "error":
            raise
        warnings.warn(f"{exc}; training anyway", PreflightWarning, stacklevel=3)
    finally:
        model.load_state_dict(state)  # the seeded initial weights, untouched
