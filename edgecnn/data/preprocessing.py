"""The preprocessing record a new model gets: the user's choices, else the field's defaults.

Defaults, as practised: a 3-channel model at 224-px scale (input 96 px or more) takes
ImageNet's mean and std (torchvision's and timm's `IMAGENET_DEFAULT_MEAN/STD`), so
pretrained weights and published recipes fit; a small-input model trained from scratch
on small images (digits, MNIST, CIFAR) takes its training set's own per-channel mean
and std. Images larger than the input are resized on the shorter side to
`input / 0.875` (256 for 224, torchvision's and timm's evaluation crop fraction) and
centre-cropped; smaller ones are resized whole (the aspect ratio of 8x8 digits or
32x32 CIFAR is that of the input already).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from edgecnn.config import INTERPOLATIONS, RESIZE_MODES, Preprocessing
from edgecnn.data.dataset import Dataset
from edgecnn.errors import EdgecnnError, ParameterError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The crop a 224-px evaluation takes of the resized image (224 / 256).
CROP_FRACTION = 0.875
#: Smallest --std (0..1 scale): below it inputs blow up to ~1e3 and beyond, nothing trains.
MIN_STD = 1e-3
#: Inputs below this many pixels per side are "small-input" models (as `model_options_for`).
SMALL_INPUT = 96


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """"0.485,0.456,0.406" -> (0.485, 0.456, 0.406); None stays None. Raises naming `flag`."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise EdgecnnError(f"{flag} takes one number per channel, comma-separated (e.g. "
                           f"0.485,0.456,0.406), got {text!r}"[:200]) from None
    if not 1 <= len(values) <= 3 or not all(math.isfinite(v) for v in values):
        raise EdgecnnError(f"{flag} takes 1 or 3 finite numbers, got {text!r}"[:200])
    return values


@dataclass(frozen=True)
class PreprocessOptions:
    """What the user chose (`--mean`, `--std`, `--resize`, `--resize-size`,
    `--interpolation`); None means the default described in the module docstring.
    mean and std are on the 0..1 scale, one value per channel."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str | None = None
    resize_size: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ParameterError("mean", "and {std} go together: give both or neither",
                                 also=("std",))
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ParameterError("mean", f"has {len(self.mean)} values but {{std}} {len(self.std)}",
                                 also=("std",))
        if self.std is not None and not all(s >= MIN_STD for s in self.std):
            raise ParameterError("std", f"values must be >= {MIN_STD} (0..1 scale), got "
                                 f"{self.std}"[:200])
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise ParameterError("resize", f"must be one of {', '.join(RESIZE_MODES)}, got "
                                 f"{self.resize!r}"[:200])
        if self.interpolation not in INTERPOLATIONS:
            raise ParameterError("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}"
                                 f", got {self.interpolation!r}"[:200])
        if self.resize_size is not None and self.resize == "whole":
            raise ParameterError("resize_size", "applies to {resize} shorter only",
                                 also=("resize",))


def choose_preprocessing(dataset: Dataset, input_size: int,
                         options: PreprocessOptions | None = None, *,
                         channels: int | None = None) -> Preprocessing:
    """The record of a model trained on `dataset` at `input_size` (square) taking
    `channels` (1 or 3; default: the data's; grey images are repeated to RGB, RGB reduced
    to luma): the user's `options`, else the defaults of the module docstring. Raises
    `EdgecnnError` naming the flag when --mean/--std do not have one value per channel or
    --resize-size is smaller than the input."""
    options = options or PreprocessOptions()
    small = input_size < SMALL_INPUT
    channels = channels or dataset.channels
    if options.mean is not None:
        if len(options.mean) == 1 == len(options.std):  # one value stands for every channel
            options = replace(options, mean=options.mean * channels, std=options.std * channels)
        if len(options.mean) != channels:
            whose = "data" if channels == dataset.channels else "model's input"
            raise ParameterError("mean", f"and {{std}} have {len(options.mean)} values but the "
                                 f"{whose} has {channels} channel(s)", also=("std",))
        mean, std = options.mean, options.std
    elif channels == 3 and not small:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = dataset.channel_stats(channels)
    resize = options.resize or (
        "shorter" if options.resize_size is not None
        or (not small and max(dataset.image_size) > input_size) else "whole")
    resize_size = None
    if resize == "shorter":
        resize_size = options.resize_size or int(round(input_size / CROP_FRACTION))
        if resize_size < input_size:
            raise ParameterError("resize_size", f"{resize_size} is smaller than {{input_size}} "
                                 f"{input_size}", also=("input_size",))
    return Preprocessing(input_size=(input_size, input_size), channels=channels, mean=mean,
                         std=std, class_names=dataset.class_names, resize=resize,
                         resize_size=resize_size, interpolation=options.interpolation)
