"""Training-side streaming: a torch `DataLoader` whose workers decode and preprocess.

Each item goes through the runtime's own `prepare` (Pillow crop, numpy normalize), so a
batch equals what `validate` feeds the exported artifact; image files (`ImageFiles`)
are decoded in the loader's worker processes, a batch at a time, never all at once.
Needs torch (the `train` extra).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from edgecnn.config import Preprocessing
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


def image_loader(images, labels: np.ndarray, record: Preprocessing, *, batch_size: int = 64,
                 shuffle: bool = False, seed: int = 0, workers: int = 0) -> DataLoader:
    """Batches (N, C, H, W) float32 and (N,) int64 labels; `workers` processes decode and
    preprocess ahead (0: in this process); `shuffle` seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ImageDataset(images, labels, record), batch_size=batch_size,
                      shuffle=shuffle, generator=generator, num_workers=workers,
                      persistent_workers=False)
