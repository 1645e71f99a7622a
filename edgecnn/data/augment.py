"""Training-time augmentation, one image or a batch (NCHW float tensors).

Photos (inputs over 64 px): random resized crop + horizontal flip, the Inception-style
augmentation of torchvision's RandomResizedCrop + RandomHorizontalFlip; small images
(digits at 32 px): a random shift, since a flip would turn a 2 into a mirrored 2. The
training loader (`edgecnn.data.loader`) applies it per batch in its workers, each image's
draws seeded by (seed, epoch, index) (`augment_seeded`), so the result does not depend on
the batch, the number of workers or of processes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def shift(x: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """Translate image i by offsets[i] = (dy, dx) in 0..2 * pad, pad = max(1, W // 8)
    (pad by replication, crop). NCHW in and out."""
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offsets)])


def resized_crop_flip(x: torch.Tensor, draws: list[tuple[float, ...]],
                      scale: tuple[float, float] = (0.25, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Image i cropped and mirrored as draws[i] = five uniforms in [0, 1) say: a crop of
    `scale` x the area (area) and aspect `ratio` (log-uniform; aspect) at (top, left),
    resized back bilinearly to the input size, mirrored left-right when flip < 1/2 (the
    Inception-style augmentation of torchvision's RandomResizedCrop +
    RandomHorizontalFlip). NCHW in and out."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    for i, (u_area, u_ratio, u_top, u_left, u_flip) in enumerate(draws):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0]))
                          * u_ratio)
        ch = min(h, max(8, round(math.sqrt(area / aspect))))
        cw = min(w, max(8, round(math.sqrt(area * aspect))))
        top, left = int(u_top * (h - ch + 1)), int(u_left * (w - cw + 1))
        crop = x[i:i + 1, :, top:top + ch, left:left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        out[i] = crop[0].flip(-1) if u_flip < 0.5 else crop[0]
    return out


def augment_seeded(x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Photos (inputs over 64 px): `resized_crop_flip`; small images (digits, 32 px): a
    random `shift` (a flip would turn a 2 into a mirrored 2). Image i's draws come from
    numpy's generator seeded by seeds[i]: an image is augmented alike in whatever batch,
    worker or process it is read."""
    rngs = [np.random.default_rng(seed) for seed in seeds]
    if max(x.shape[-2:]) > 64:
        return resized_crop_flip(x, [tuple(rng.random(5).tolist()) for rng in rngs])
    pad = max(1, x.shape[-1] // 8)
    return shift(x, [tuple(rng.integers(0, 2 * pad + 1, 2).tolist()) for rng in rngs])
