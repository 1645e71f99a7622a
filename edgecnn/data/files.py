"""Image files decoded when read: a dataset of photos never sits in memory whole.

`ImageFiles` is a sequence of image paths that decodes an image (Pillow) only when
it is indexed, at its own size; `batches` reads any image sequence a batch at a
time with a bounded number of batches decoded ahead in a thread (Pillow releases
the GIL while decoding and resizing, so decoding overlaps inference). Torch-free.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgecnnError

#: File suffixes `imagefolder:` reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Batches decoded ahead of the one being used (bounded: memory does not grow with N).
PREFETCH_BATCHES = 2


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise EdgecnnError("image files need Pillow: pip install pillow") from None
    return Image


def decode(path: Path, mode: str) -> np.ndarray:
    """The image at `path` as uint8 (H, W, C) in `mode` ("L": C = 1, "RGB": C = 3).

    Raises `EdgecnnError` naming the file when it is missing or not a readable image.
    """
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            array = np.asarray(image.convert(mode), np.uint8)
    except (OSError, ValueError, image_module.DecompressionBombError) as exc:
        raise EdgecnnError(f"{path}: not a readable image ({exc})") from None
    return array.reshape(*array.shape[:2], 1 if mode == "L" else 3)


def file_mode(path: Path) -> str:
    """"L" for greyscale files (L, 1, I;16, I, F), else "RGB" (read from the header only)."""
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            return "L" if image.mode in ("L", "1", "I;16", "I", "F", "LA") else "RGB"
    except (OSError, ValueError, image_module.DecompressionBombError) as exc:
        raise EdgecnnError(f"{path}: not a readable image ({exc})") from None


def file_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            return image.size[1], image.size[0]
    except (OSError, ValueError, image_module.DecompressionBombError) as exc:
        raise EdgecnnError(f"{path}: not a readable image ({exc})") from None


class ImageFiles(Sequence):
    """Image files as a sequence of uint8 (H, W, C) arrays, each decoded when indexed,
    each at its own size. Integer index -> one image; a slice, index array or boolean
    mask -> another `ImageFiles` (nothing decoded)."""

    def __init__(self, paths: Sequence[Path | str], mode: str) -> None:
        if mode not in ("L", "RGB"):
            raise EdgecnnError(f"mode must be 'L' or 'RGB', got {mode!r}")
        self.paths = tuple(Path(p) for p in paths)
        self.mode = mode

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return decode(self.paths[index], self.mode)
        if isinstance(index, slice):
            return ImageFiles(self.paths[index], self.mode)
        index = np.asarray(index)
        if index.dtype == np.bool_:
            index = np.flatnonzero(index)
        return ImageFiles([self.paths[int(i)] for i in index], self.mode)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files, {self.mode})"


def batches(images: Sequence, batch_size: int,
            transform: Callable[[Sequence], np.ndarray] = np.asarray,
            prefetch: int = PREFETCH_BATCHES) -> Iterator[np.ndarray]:
    """`transform(images[i:i + batch_size])` for each batch in order, at most `prefetch`
    batches computed ahead in one thread (an array's batches are views: no thread)."""
    starts = range(0, len(images), batch_size)

    def one(start: int) -> np.ndarray:
        return transform(images[start:start + batch_size])

    if isinstance(images, np.ndarray) or prefetch < 1:
        yield from (one(start) for start in starts)
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="edgecnn-decode") as pool:
        pending = [pool.submit(one, start) for start in starts[:prefetch]]
        for k in range(len(starts)):
            batch = pending.pop(0).result()
            if k + prefetch < len(starts):
                pending.append(pool.submit(one, starts[k + prefetch]))
            yield batch
