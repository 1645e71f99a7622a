"""The `Dataset` container, the reader registry and the seeded split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.registry import Registry

#: spec prefix -> reader(arg, seed, val_fraction) -> Dataset
sources: Registry = Registry("data source")


@dataclass(frozen=True)
class Dataset:
    """Train and validation splits as uint8 NHWC images with int64 labels."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[1:3])

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[3])

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images, on the 0..1 scale."""
        x = self.train_images.reshape(-1, self.channels).astype(np.float64) / 255.0
        mean, std = x.mean(0), np.maximum(x.std(0), 1e-3)
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
    """Validate arrays, split them when no validation set is given, build a Dataset."""
    from edgecnn.runtime.preprocess import as_nhwc

    if np.ndim(images) not in (3, 4):
        raise EdgecnnError(f"{name}: expected images shaped (N,H,W) or (N,H,W,C), "
                           f"got {np.shape(images)}")
    images = as_nhwc(images)
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0:
            images = np.round(images * 255.0).astype(np.uint8)
        else:
            raise EdgecnnError(
                f"{name}: images must be uint8 (0..255) or float in [0, 1], got {images.dtype}"
            )
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise EdgecnnError(f"{name}: {len(images)} images but {len(labels)} labels")
    if val is None:
        tr_x, tr_y, va_x, va_y = split(images, labels, seed, val_fraction)
    else:
        tr_x, tr_y = images, labels
        va_x = as_nhwc(val[0]).astype(np.uint8)
        va_y = np.asarray(val[1]).astype(np.int64).reshape(-1)
    num_classes = int(np.concatenate([tr_y, va_y]).max()) + 1
    if class_names is None:
        class_names = tuple(str(i) for i in range(num_classes))
    if len(class_names) < num_classes:
        raise EdgecnnError(f"{name}: labels go up to {num_classes - 1} but only "
                           f"{len(class_names)} class names are given")
    return Dataset(name, tr_x, tr_y, va_x, va_y, tuple(class_names))


def load(spec: str, *, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    """Load a dataset from a spec: `digits`, `mnist:DIR`, `cifar10:DIR`, `imagefolder:DIR`,
    `npz:FILE`."""
    kind, _, arg = spec.partition(":")
    reader = sources.get(kind)
    return reader(arg, seed=seed, val_fraction=val_fraction)
