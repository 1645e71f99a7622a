"""One small reader per data source, registered under its spec prefix.

Every reader reads local files only and raises `EdgecnnError` naming the file
and what was expected when the file is missing or malformed.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from edgecnn.data.dataset import MAX_CLASSES, Dataset, make_dataset, sources
from edgecnn.data.files import file_size
from edgecnn.errors import EdgecnnError


def _existing_dir(arg: str, kind: str) -> Path:
    if not arg:
        raise EdgecnnError(f"data spec {kind!r} needs a path: {kind}:DIR")
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise EdgecnnError(f"{kind}: directory not found: {path}")
    return path


@sources.register("digits")
def read_digits(arg: str, *, seed: int, val_fraction: float) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes)."""
    if arg:
        raise EdgecnnError(f"data spec 'digits' takes no argument, got 'digits:{arg}'")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EdgecnnError(
            "the embedded 'digits' data comes with scikit-learn: pip install 'edgecnn[train]', "
            "or pass a local dataset such as npz:FILE"
        ) from None
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return make_dataset("digits", images, bunch.target, tuple(str(n) for n in bunch.target_names),
                        seed=seed, val_fraction=val_fraction)


# --- MNIST ------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): magic 0x0000TTNN, NN big-endian uint32 dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise EdgecnnError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise EdgecnnError(f"{path}: not an IDX file (expected magic 0x0000TTNN)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise EdgecnnError(f"{path}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise EdgecnnError(f"{path}: IDX data has {len(raw) - header} bytes, "
                           f"dims {dims} need {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for pattern in (f"{stem}-idx*-ubyte", f"{stem}-idx*-ubyte.gz", f"{stem}.idx*-ubyte",
                    f"{stem}.idx*-ubyte.gz"):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0]
    raise EdgecnnError(f"mnist: {root} has no {stem}-idx*-ubyte[.gz] file")


@sources.register("mnist")
def read_mnist(arg: str, *, seed: int, val_fraction: float) -> Dataset:
    """MNIST (or Fashion-MNIST) IDX files; the t10k files are the validation split."""
    root = _existing_dir(arg, "mnist")
    arrays = {stem: read_idx(_find_idx(root, stem))
              for stem in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    return make_dataset("mnist", arrays["train-images"], arrays["train-labels"], None,
                        seed=seed, val_fraction=val_fraction,
                        val=(arrays["t10k-images"], arrays["t10k-labels"]))


# --- CIFAR-10 ---------------------------------------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; a pickle can run code, so allow numpy arrays only."""

    _allowed = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                for name in ("_reconstruct", "scalar")}
    _allowed |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict:
    if not path.is_file():
        raise EdgecnnError(f"cifar10: missing file {path}")
    try:
        with open(path, "rb") as f:
            return _ArrayOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a malformed file
        raise EdgecnnError(f"{path}: not a CIFAR-10 python batch ({exc})") from None


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_cifar_pickle(path)
    try:
        data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[b"labels"], np.int64)
    except (KeyError, ValueError, TypeError) as exc:
        raise EdgecnnError(f"{path}: expected b'data' (N x 3072 uint8) and b'labels' ({exc})") \
            from None
    return data, labels


@sources.register("cifar10")
def read_cifar10(arg: str, *, seed: int, val_fraction: float) -> Dataset:
    """CIFAR-10 python batches: data_batch_1..5 for training, test_batch for validation."""
    root = _existing_dir(arg, "cifar10")
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files:
        raise EdgecnnError(f"cifar10: {root} has no data_batch_* files")
    parts = [_cifar_batch(p) for p in train_files]
    val = _cifar_batch(root / "test_batch")
    names = None
    if (root / "batches.meta").is_file():
        meta = _load_cifar_pickle(root / "batches.meta")
        names = tuple(n.decode() for n in meta.get(b"label_names", [])) or None
    return make_dataset("cifar10", np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] for p in parts]), names,
                        seed=seed, val_fraction=val_fraction, val=val)


# --- image folders ----------------------------------------------------------------------

def _read_class_folders(root: Path, class_names: tuple[str, ...] | None = None):
    """(ImageFiles, labels, class names) of DIR/<class>/*; every file's header is read
    now (a file that is no image fails here, before any work), its pixels later."""
    from edgecnn.data.files import IMAGE_SUFFIXES, ImageFiles, file_mode

    names = class_names or tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if len(names) < 2:
        raise EdgecnnError(
            f"imagefolder: {root} needs one subfolder per class (found {len(names)})")
    paths, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        if not files and class_names is None:  # a class to learn with nothing to learn from
            raise EdgecnnError(f"imagefolder: class folder {folder} holds no PNG/JPEG images")
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise EdgecnnError(f"imagefolder: no PNG/JPEG images under {root}")
    modes = [file_mode(path) for path in paths]
    return ImageFiles(paths, modes[0]), np.asarray(labels), names


@sources.register("imagefolder")
def read_imagefolder(arg: str, *, seed: int, val_fraction: float) -> Dataset:
    """DIR/<class>/*.png|jpg, or DIR/train/<class>/ and DIR/val/<class>/ when both exist.

    Images are read lazily (`ImageFiles`), each at its own size until preprocessing
    resizes and crops it; all in the first file's mode (greyscale or RGB).
    """
    root = _existing_dir(arg, "imagefolder")
    if (root / "train").is_dir() and (root / "val").is_dir():
        tr_x, tr_y, names = _read_class_folders(root / "train")
        va_x, va_y, _ = _read_class_folders(root / "val", names)
        if va_x.mode != tr_x.mode:
            from edgecnn.data.files import ImageFiles

            va_x = ImageFiles(va_x.paths, tr_x.mode)
        return make_dataset("imagefolder", tr_x, tr_y, names, seed=seed,
                            val_fraction=val_fraction, val=(va_x, va_y))
    x, y, names = _read_class_folders(root)
    return make_dataset("imagefolder", x, y, names, seed=seed, val_fraction=val_fraction)


# --- npz --------------------------------------------------------------------------------

#: Largest array an npz may hold (uncompressed), checked before it is read.
MAX_NPZ_MEMBER_BYTES = 16 * 2**30


@sources.register("npz")
def read_npz(arg: str, *, seed: int, val_fraction: float) -> Dataset:
    """An .npz with arrays `x` (N,H,W[,C], uint8 or float in [0,1]) and `y` (N,) int labels.

    Optional: `x_val` and `y_val` (used as the validation split) and `class_names`.
    """
    if not arg:
        raise EdgecnnError("data spec 'npz' needs a file: npz:FILE")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise EdgecnnError(f"npz: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("a single array, not an archive of named arrays")
            for member in f.zip.infolist():
                if member.file_size > MAX_NPZ_MEMBER_BYTES:
                    raise ValueError(f"member {member.filename} expands to "
                                     f"{member.file_size} bytes")
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for a bad file
        raise EdgecnnError(f"{path}: not a readable .npz ({exc})") from None
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise EdgecnnError(f"{path}: expected arrays 'x' (images) and 'y' (labels); "
                           f"missing {sorted(missing)}, found {sorted(arrays)}")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise EdgecnnError(f"{path}: has {'x_val' if 'x_val' in arrays else 'y_val'} without "
                           f"{'y_val' if 'x_val' in arrays else 'x_val'}")
    val = (arrays["x_val"], arrays["y_val"]) if "x_val" in arrays else None
    names = None
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.ndim != 1 or raw.dtype.kind not in "US" or len(raw) > MAX_CLASSES:
            raise EdgecnnError(f"{path}: class_names must be a 1-D array of strings (at most "
                               f"{MAX_CLASSES}), got {raw.dtype} shaped {raw.shape}")
        names = tuple(str(n) for n in raw)
    return make_dataset(f"npz:{path.name}", arrays["x"], arrays["y"], names, seed=seed,
                        val_fraction=val_fraction, val=val)


def _array(images, what: str) -> np.ndarray:
    from edgecnn.data.files import ImageFiles

    if not isinstance(images, ImageFiles):
        return images
    if len({file_size(p) for p in images.paths}) > 1:
        raise EdgecnnError(f"the {what} images differ in size; an .npz holds images of one "
                           "size (copy the image folder instead)")
    return np.stack([images[i] for i in range(len(images))]) if len(images) else \
        np.zeros((0, 1, 1, images.channels), np.uint8)


def save_npz(dataset: Dataset, path: Path, *, validation_only: bool = False) -> None:
    """Write a dataset as an .npz that `npz:FILE` reads back (e.g. to copy to a device).

    Raises `EdgecnnError` for image files of different sizes."""
    arrays = {"x_val": _array(dataset.val_images, "validation"), "y_val": dataset.val_labels,
              "class_names": np.asarray(dataset.class_names)}
    if validation_only:
        arrays.update(x=arrays["x_val"][:0], y=dataset.val_labels[:0])
    else:
        arrays.update(x=_array(dataset.train_images, "training"), y=dataset.train_labels)
    np.savez_compressed(path, **arrays)
