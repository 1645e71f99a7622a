"""Image preprocessing shared by training and every runtime (numpy and Pillow, no torch).

Training, calibration and deployment call the same two steps, so a model sees
identical inputs on a workstation with torch and on a Raspberry Pi without it:
`crop` (Pillow: resize and centre crop, uint8 in and out, as torchvision's PIL
path computes it) and `normalize` (numpy: scale, channels, mean/std, layout).
`prepare` is both for a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgecnn.config import Preprocessing
from edgecnn.errors import EdgecnnError


def _filter(name: str):
    from PIL import Image

    resampling = getattr(Image, "Resampling", Image)  # Pillow >= 9.1 names them there
    return {"bilinear": resampling.BILINEAR, "bicubic": resampling.BICUBIC}[name]


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise EdgecnnError("resizing images needs Pillow: pip install pillow") from None
    return Image


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side `size` and the aspect ratio kept, the longer
    side truncated as torchvision's `Resize(size)` does (`int(size * long / short)`)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def centre_box(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the centre `crop` (h, w), rounded as torchvision's `CenterCrop`."""
    return int(round((height - crop[0]) / 2.0)), int(round((width - crop[1]) / 2.0))


def crop(image: np.ndarray, record: Preprocessing) -> np.ndarray:
    """One uint8 HWC (or HW) image of any size -> the uint8 (H, W, C) `input_size` crop
    the record describes (C as in the image; channels are converted in `normalize`).

    Pillow resizes (its BILINEAR / BICUBIC filters, antialiased when downscaling); an
    image already of the target size is returned as it is. Raises `EdgecnnError` for an
    image that is not uint8 with 1 or 3 channels.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3) \
            or min(image.shape[:2]) < 1:
        raise EdgecnnError(f"expected a uint8 image shaped (H, W[, C]) with C in {{1, 3}}, got "
                           f"{image.dtype} {image.shape}")
    out_h, out_w = record.input_size
    h, w = image.shape[:2]
    if record.resize == "shorter":
        size = shorter_side_size(h, w, record.resize_size)
    else:
        size = (out_h, out_w)
    if (h, w) != size:
        pil = _pillow().fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        resized = np.asarray(pil.resize((size[1], size[0]), _filter(record.interpolation)))
        image = resized.reshape(size[0], size[1], image.shape[-1])
    if image.shape[:2] != (out_h, out_w):
        top, left = centre_box(*image.shape[:2], (out_h, out_w))
        image = image[top:top + out_h, left:left + out_w]
    return np.ascontiguousarray(image)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as it is; float in [0, 1] scaled by 255 and rounded (Pillow resizes uint8)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer):
        return np.clip(image, 0, 255).astype(np.uint8)
    raise EdgecnnError(f"images must be uint8 (0..255) or float (0..1), got {image.dtype}")


def crops(images: np.ndarray | Sequence[np.ndarray], record: Preprocessing) -> np.ndarray:
    """uint8 NHWC / NHW arrays, or a sequence of HWC images of different sizes -> the
    uint8 (N, H, W, C) crops of `crop`. An array already of `input_size` is returned as
    it is (float images too); float images that need resizing are rounded to uint8."""
    if isinstance(images, np.ndarray):
        images = as_nhwc(images)
        if images.shape[1:3] == tuple(record.input_size):
            return images
    cut = [crop(_as_uint8(image), record) for image in images]
    if not cut:
        return np.zeros((0, *record.input_size, record.channels), np.uint8)
    if len({c.shape[-1] for c in cut}) > 1:
        cut = [np.repeat(c, 3, axis=-1) if c.shape[-1] == 1 else c for c in cut]
    return np.stack(cut)


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


def normalize(images: np.ndarray, record: Preprocessing) -> np.ndarray:
    """uint8 (N, H, W, C) crops (or float ones in [0, 1]) -> the model's float32 input:
    x / 255 for uint8, channels as the
    record says (grey repeated to RGB, or RGB to luma with ITU-R 601 weights),
    (x - mean) / std, `record.layout`."""
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= np.float32(255.0)
    if x.shape[-1] != record.channels:
        if x.shape[-1] == 1 and record.channels == 3:
            x = np.repeat(x, 3, axis=-1)
        elif x.shape[-1] == 3 and record.channels == 1:
            x = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    x = (x - np.asarray(record.mean, np.float32)) / np.asarray(record.std, np.float32)
    if record.layout == "NCHW":
        # a copy with C-order strides: numpy keeps a transposed size-1 channel axis's
        # stride, torch would read that as channels-last, and torch.export then traces
        # strided views (as_strided) instead of plain reshapes
        return np.array(x.transpose(0, 3, 1, 2), dtype=np.float32, order="C", copy=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def prepare(images: np.ndarray | Sequence[np.ndarray], record: Preprocessing) -> np.ndarray:
    """uint8 images (0..255) or float images (0..1): an NHWC / NHW array, or a sequence
    of HWC images of any sizes -> the model's float32 input (`crops`, then `normalize`)."""
    return normalize(crops(images, record), record)
