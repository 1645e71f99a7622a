"""Training-side streaming: torch `DataLoader`s whose workers decode, preprocess, augment.

Each item goes through the runtime's own `prepare` (Pillow crop, numpy normalize), so a
batch equals what `validate` feeds the exported artifact; image files (`ImageFiles`)
are decoded in the loader's worker processes, a batch at a time, never all at once, so
training memory does not grow with the dataset.

Training batches (`train_loader`) follow a `DistributedSampler`: each epoch is a
permutation seeded by (seed, epoch), and rank r of W processes reads positions r, r + W,
... of it, so the W per-rank batches of step k together are exactly the global batch k
one process reads. Augmentation draws are seeded per image by (seed, epoch, index) and
applied a batch at a time in the workers (`Augmented.collate`). The
same seed thus gives the same global batches, augmented alike, with any number of
workers and processes. Needs torch (the `train` extra).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torch.utils.data import Dataset as TorchDataset

from edgecnn.config import Preprocessing
from edgecnn.data.augment import augment_seeded
from edgecnn.errors import EdgecnnError
from edgecnn.preprocess import prepare


class ImageDataset(TorchDataset):
    """(images, labels, record) -> items (float32 CHW tensor, int64 label); `images` is a
    uint8 NHWC array or `ImageFiles` (decoded when an item is read)."""

    def __init__(self, images, labels: np.ndarray, record: Preprocessing) -> None:
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.record = record.with_layout("NCHW")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = prepare([self.images[int(index)]], self.record)[0]
        return torch.from_numpy(x), int(self.labels[index])


class TensorItems(TorchDataset):
    """Preprocessed tensors as items: x (N, C, H, W) float, y (N,) int64 (the Python
    API's `(x, y)`; their memory is the caller's)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[int(index)], int(self.y[int(index)])


def as_items(data) -> TorchDataset:
    """A torch Dataset of (CHW tensor, label) items as it is; `(x, y)` tensors wrapped."""
    if isinstance(data, (tuple, list)):
        return TensorItems(*data)
    return data


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation draws in one epoch (numpy's SeedSequence:
    independent streams for neighbouring keys)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


class Augmented(TorchDataset):
    """Items of `base` keyed by (epoch, index), each with the seed of its augmentation
    draws in that epoch: (x, label, seed); `collate` stacks a batch and augments it."""

    def __init__(self, base: TorchDataset, seed: int, enabled: bool = True) -> None:
        self.base, self.seed, self.enabled = base, seed, enabled

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, index = key
        x, y = self.base[index]
        return x, y, item_seed(self.seed, epoch, index)

    def collate(self, items: list[tuple[torch.Tensor, int, int]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) inputs, augmented per image (`data.augment.augment_seeded`) when
        enabled, and (N,) int64 labels."""
        x = torch.stack([item[0] for item in items])
        if self.enabled:
            x = augment_seeded(x, [item[2] for item in items])
        return x, torch.tensor([item[1] for item in items], dtype=torch.int64)


class EpochSampler(Sampler):
    """A `DistributedSampler` (shuffled, seeded, this rank's share) whose indices come as
    (epoch, index) keys for `Augmented`; `set_epoch` before each epoch."""

    def __init__(self, size: int, *, seed: int, rank: int, world_size: int) -> None:
        self.inner = DistributedSampler(range(size), num_replicas=world_size, rank=rank,
                                        shuffle=True, seed=seed, drop_last=False)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in self.inner)


def batches(loader: DataLoader) -> Iterator:
    """The loader's batches; an `EdgecnnError` raised in a worker process (a file that
    is no image) comes out as its own one line, not as the loader's re-raise, whose
    message carries the worker's traceback."""
    try:
        yield from loader
    except EdgecnnError as exc:
        found = re.search(r"EdgecnnError: (.+)\s*$", str(exc))
        if str(exc).startswith("Caught ") and found:
            raise EdgecnnError(found.group(1).strip()) from None
        raise


def _loader(dataset: TorchDataset, batch_size: int, sampler, workers: int,
            pin_memory: bool = False, collate=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=pin_memory,
                      collate_fn=collate)


def train_loader(data, *, batch_size: int, seed: int, augment: bool, workers: int = 0,
                 rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False) -> tuple[DataLoader, EpochSampler]:
    """(loader, sampler) of this rank's training batches: `batch_size` is its share of the
    global batch; call `sampler.set_epoch(e)` before epoch e. `data`: a torch Dataset of
    (CHW tensor, label) items or `(x, y)` tensors."""
    items = as_items(data)
    sampler = EpochSampler(len(items), seed=seed, rank=rank, world_size=world_size)
    augmented = Augmented(items, seed, augment)
    return _loader(augmented, batch_size, sampler, workers, pin_memory,
                   augmented.collate), sampler


def eval_loader(data, *, batch_size: int = 256, workers: int = 0, rank: int = 0,
                world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """Batches, in order, of this rank's share of `data` (rank r of W reads items r,
    r + W, ...; nothing repeated, so counts summed over the ranks are exact)."""
    items = as_items(data)
    return _loader(items, batch_size, list(range(rank, len(items), world_size)), workers,
                   pin_memory)


def image_loader(images, labels: np.ndarray, record: Preprocessing, *, batch_size: int = 64,
                 shuffle: bool = False, seed: int = 0, workers: int = 0) -> DataLoader:
    """Batches (N, C, H, W) float32 and (N,) int64 labels; `workers` processes decode and
    preprocess ahead (0: in this process); `shuffle` seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ImageDataset(images, labels, record), batch_size=batch_size,
                      shuffle=shuffle, generator=generator, num_workers=workers,
                      persistent_workers=False)
