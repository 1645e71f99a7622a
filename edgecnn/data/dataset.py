"""The `Dataset` container, the reader registry and the seeded split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecnn.data.files import ImageFiles, file_size
from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.registry import Registry

#: spec prefix -> reader(arg, seed, val_fraction) -> Dataset
sources: Registry = Registry("data source")


#: Images `Dataset.channel_stats` decodes at most from a dataset of image files.
STATS_SAMPLE = 512


@dataclass(frozen=True)
class Dataset:
    """Train and validation splits with int64 labels. The images are uint8 NHWC arrays
    (digits, mnist, cifar10, npz: one size), or `ImageFiles` (imagefolder: decoded when
    read, each at its own size, so the split never sits in memory whole)."""

    name: str
    train_images: np.ndarray | ImageFiles
    train_labels: np.ndarray
    val_images: np.ndarray | ImageFiles
    val_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images; of the first image for image files."""
        images = self.train_images if len(self.train_images) else self.val_images
        if isinstance(images, ImageFiles):
            return file_size(images.paths[0])
        return tuple(images.shape[1:3])

    @property
    def channels(self) -> int:
        images = self.train_images if len(self.train_images) else self.val_images
        if isinstance(images, ImageFiles):
            return images.channels
        return int(images.shape[3])

    def channel_stats(self, channels: int | None = None,
                      ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images, on the 0..1 scale (of at most
        `STATS_SAMPLE` evenly spaced images when they are files); with `channels` (1 or 3)
        other than the images', of the images converted as `preprocess.normalize` converts
        them (grey repeated, or RGB to luma)."""
        images = self.train_images
        if isinstance(images, ImageFiles):
            step = max(1, len(images) // STATS_SAMPLE)
            pixels = [images[i].reshape(-1, self.channels) for i in range(0, len(images), step)]
            x = np.concatenate(pixels).astype(np.float64) / 255.0
        else:
            x = images.reshape(-1, self.channels).astype(np.float64) / 255.0
        if channels == 1 and self.channels == 3:
            x = x @ np.array([[0.299], [0.587], [0.114]])
        mean, std = x.mean(0), np.maximum(x.std(0), 1e-3)
        if channels == 3 and self.channels == 1:
            mean, std = np.repeat(mean, 3), np.repeat(std, 3)
        return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def split(
    images: np.ndarray, labels: np.ndarray, seed: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A deterministic, seeded, per-class (stratified) train/validation split."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        val_idx.append(idx[: max(1, round(len(idx) * val_fraction))])
    val_mask = np.zeros(len(labels), bool)
    val_mask[np.concatenate(val_idx)] = True
    return images[~val_mask], labels[~val_mask], images[val_mask], labels[val_mask]


#: Bounds checked before any image is converted.
MAX_CLASSES = 100_000
MAX_SIDE = 8192


def to_images(images: object, name: str, key: str) -> np.ndarray:
    """One conversion for every split: uint8 NHWC images, with one-line errors naming `key`.

    Accepts (N,H,W) or (N,H,W,C) with C in {1, 3}; uint8 (0..255), other integers within
    0..255, or float in [0, 1] (scaled by 255 and rounded). Refuses bool, strings and
    objects, NaN, values out of range, and empty image dimensions.
    """
    from edgecnn.preprocess import as_nhwc

    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise EdgecnnError(f"{name}: {key}: expected images shaped (N,H,W) or (N,H,W,C), got "
                           f"{x.shape}")
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] not in (1, 3) or min(x.shape[1:3], default=0) < 1 \
            or max(x.shape[1:3]) > MAX_SIDE:
        raise EdgecnnError(f"{name}: {key} has image shape {x.shape[1:]}; expected H, W in "
                           f"1..{MAX_SIDE} and 1 or 3 channels")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer)
                                   or np.issubdtype(x.dtype, np.floating)):
        raise EdgecnnError(f"{name}: {key} is {x.dtype}; images must be uint8 (0..255) or "
                           "float in [0, 1]")
    if x.dtype != np.uint8 and x.size:
        low, high = float(np.min(x)), float(np.max(x))
        if np.issubdtype(x.dtype, np.floating):
            if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 1:
                raise EdgecnnError(f"{name}: {key} is {x.dtype} with values in [{low}, "
                                   f"{high}]; float images must be finite and in [0, 1]")
            x = np.round(x.astype(np.float64) * 255.0)
        elif low < 0 or high > 255:
            raise EdgecnnError(f"{name}: {key} is {x.dtype} with values in [{low:g}, "
                               f"{high:g}]; integer images must be in 0..255")
    return as_nhwc(x.astype(np.uint8, copy=False))


def to_labels(labels: object, count: int, name: str, key: str) -> np.ndarray:
    """int64 class indices: integers in 0..MAX_CLASSES-1, one per image."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise EdgecnnError(f"{name}: {key} must be a 1-D array of class indices, got shape "
                           f"{y.shape}")
    if len(y) != count:
        raise EdgecnnError(f"{name}: {count} images but {len(y)} labels in {key}")
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer)
                                   or np.issubdtype(y.dtype, np.floating)):
        raise EdgecnnError(f"{name}: {key} is {y.dtype}; labels must be integer class indices")
    if y.size:
        if np.issubdtype(y.dtype, np.floating) and not (
                np.isfinite(y).all() and (y == np.round(y)).all()):
            raise EdgecnnError(f"{name}: {key} holds non-integer labels (NaN, inf or "
                               "fractions)")
        low, high = float(y.min()), float(y.max())
        if low < 0 or high >= MAX_CLASSES:
            raise EdgecnnError(f"{name}: {key} holds labels in [{low:g}, {high:g}]; class "
                               f"indices must be in 0..{MAX_CLASSES - 1}")
    return y.astype(np.int64)


def make_dataset(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...] | None,
    *,
    seed: int,
    val_fraction: float,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    """Validate arrays, split them when no validation set is given, build a Dataset.

    `images` (and `val[0]`) may be `ImageFiles`: they are taken as they are (each file
    is checked when it is read)."""
    tr_x = images if isinstance(images, ImageFiles) else to_images(images, name, "x")
    tr_y = to_labels(labels, len(tr_x), name, "y")
    if val is None:
        if len(tr_x) == 0:
            raise EdgecnnError(f"{name}: no images")
        tr_x, tr_y, va_x, va_y = split(tr_x, tr_y, seed, val_fraction)
        if len(tr_y) == 0:
            raise EdgecnnError(f"{name}: {len(va_y)} images leave none to train on once each "
                               f"class keeps one for validation")
    else:
        va_x = val[0] if isinstance(val[0], ImageFiles) else to_images(val[0], name, "x_val")
        va_y = to_labels(val[1], len(va_x), name, "y_val")
        if isinstance(tr_x, np.ndarray) and isinstance(va_x, np.ndarray) and len(tr_x) \
                and va_x.shape[1:] != tr_x.shape[1:]:
            raise EdgecnnError(f"{name}: validation images are {va_x.shape[1:]} but training "
                               f"images {tr_x.shape[1:]} (H, W, C)")
    all_labels = np.concatenate([tr_y, va_y])
    if len(all_labels) == 0:
        raise EdgecnnError(f"{name}: no labels")
    num_classes = int(all_labels.max()) + 1
    if class_names is None:
        class_names = tuple(str(i) for i in range(num_classes))
    if len(class_names) < num_classes:
        raise EdgecnnError(f"{name}: labels go up to {num_classes - 1} but only "
                           f"{len(class_names)} class names are given")
    if len(class_names) < 2:
        raise EdgecnnError(f"{name}: a classifier needs at least two classes, got "
                           f"{len(class_names)}")
    return Dataset(name, tr_x, tr_y, va_x, va_y, tuple(class_names))


#: Sources that read a path (the others take no argument).
PATH_SOURCES = ("mnist", "cifar10", "imagefolder", "npz")


def check_spec(spec: str) -> None:
    """Fail fast on a malformed data spec (unknown source, missing or extra argument,
    a path that does not exist) without reading any data."""
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError("data", f"is empty; known sources: {', '.join(sorted(sources))}")
    kind, sep, arg = spec.partition(":")
    sources.get(kind)  # raises listing the known sources
    if kind in PATH_SOURCES:
        from pathlib import Path

        if not arg:
            raise ParameterError("data", f"{spec}: {kind} needs a path ({kind}:PATH)")
        what = "file" if kind == "npz" else "directory"
        if not Path(arg).expanduser().exists():
            raise ParameterError("data", f"{spec}: {what} not found: {arg}")
    elif sep:
        raise ParameterError("data", f"{spec}: {kind!r} takes no argument")


def load(spec: str, *, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    """Load a dataset from a spec: `digits`, `mnist:DIR`, `cifar10:DIR`, `imagefolder:DIR`,
    `npz:FILE`."""
    kind, _, arg = spec.partition(":")
    reader = sources.get(kind)
    return reader(arg, seed=seed, val_fraction=val_fraction)
