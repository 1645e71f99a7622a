"""Image preprocessing in numpy, shared by training and every runtime.

Training and deployment call the same function, so a model sees identical
inputs on a workstation with torch and on a Raspberry Pi without it.
"""

from __future__ import annotations

import numpy as np

from edgecnn.config import Preprocessing
from edgecnn.errors import EdgecnnError


def resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float NHWC images with half-pixel-centre bilinear sampling (no antialias)."""
    n, h, w, c = images.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return images

    def taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = taps(h, out_h)
    x0, x1, fx = taps(w, out_w)
    rows = images[:, y0] * (1 - fy)[None, :, None, None] + images[:, y1] * fy[None, :, None, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :, None] + rows[:, :, x1] * fx[None, None, :, None]


def as_nhwc(images: np.ndarray) -> np.ndarray:
    """Accept (N,H,W), (N,H,W,C) or a single (H,W[,C]) image; return N,H,W,C."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim == 3 and images.shape[-1] not in (1, 3):
        images = images[..., None]
    elif images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise EdgecnnError(
            f"expected images shaped (N,H,W) or (N,H,W,C) with C in {{1,3}}, got {images.shape}"
        )
    return images


def prepare(images: np.ndarray, record: Preprocessing) -> np.ndarray:
    """uint8 images (0..255) or float images (0..1), NHWC -> the model's float32 input."""
    images = as_nhwc(images)
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    if x.shape[-1] != record.channels:
        if x.shape[-1] == 1 and record.channels == 3:
            x = np.repeat(x, 3, axis=-1)
        elif x.shape[-1] == 3 and record.channels == 1:
            x = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    x = resize_bilinear(x, record.input_size)
    x = (x - np.asarray(record.mean, np.float32)) / np.asarray(record.std, np.float32)
    if record.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)
