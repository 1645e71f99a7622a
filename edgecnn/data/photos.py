"""Natural photos that ship inside installed packages, cut into many model-sized crops.

For measuring int8 fidelity at ImageNet scale without downloading anything:
scikit-learn's `load_sample_images()` (china, flower) and, when scikit-image is
installed, the colour photos bundled in `skimage.data` (astronaut, chelsea,
coffee, rocket, the stereo motorcycle's left view, the Hubble deep field,
immunohistochemistry). No labels: fidelity compares two runtimes' outputs on
the same inputs. Torch-free (numpy and pillow).
"""

from __future__ import annotations

import numpy as np

from edgecnn.errors import EdgecnnError

#: scikit-image's bundled colour photos (its loaders read files inside the package)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle",
                  "hubble_deep_field", "immunohistochemistry")


def sample_photos() -> dict[str, np.ndarray]:
    """{name: uint8 HWC RGB photo}: scikit-learn's two, plus scikit-image's when installed.

    Raises EdgecnnError when scikit-learn is missing (it is in the `train` extra).
    """
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise EdgecnnError("sample photos need scikit-learn: pip install 'edgecnn[train]'") \
            from None
    bunch = load_sample_images()
    photos = {name.rsplit("/", 1)[-1].split(".")[0]: np.asarray(image)
              for name, image in zip(bunch.filenames, bunch.images, strict=True)}
    try:
        import skimage.data
    except ImportError:
        return photos
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        photos[name] = np.asarray(image[0] if isinstance(image, tuple) else image)
    return photos


def random_crops(photos: dict[str, np.ndarray], count: int, *, size: int = 224, seed: int = 0,
                 min_scale: float = 0.3) -> np.ndarray:
    """`count` uint8 (count, size, size, 3) crops, cycling through the photos.

    Each crop is a square of side `scale` x the photo's short side (scale uniform
    in [min_scale, 1]) at a uniform offset, flipped left-right with probability
    1/2, resized bilinearly to `size` (PIL). Seeded: the same arguments give the
    same crops.
    """
    from PIL import Image

    if count < 1 or not photos:
        raise EdgecnnError(f"random_crops needs count >= 1 and photos, got {count} and "
                           f"{len(photos)} photos")
    rng = np.random.default_rng(seed)
    images = list(photos.values())
    crops = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        photo = images[i % len(images)]
        h, w = photo.shape[:2]
        side = max(8, int(min(h, w) * rng.uniform(min_scale, 1.0)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        crop = crop.resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops[i] = np.asarray(crop)
    return crops


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, x / 255 then (x - mean) / std per channel (as
    `config.Preprocessing` describes)."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
