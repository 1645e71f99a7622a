import gzip
import pickle
import struct

import numpy as np
import pytest

from edgecnn.config import Preprocessing
from edgecnn.data import load, save_npz
from edgecnn.errors import EdgecnnError
from edgecnn.preprocess import prepare


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def images(n, h=6, w=6, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_digits_is_real_and_split_is_seeded_and_stratified(digits):
    assert len(digits.train_images) + len(digits.val_images) == 1797
    assert digits.train_images.shape[1:] == (8, 8, 1) and digits.train_images.dtype == np.uint8
    assert digits.class_names == tuple(str(i) for i in range(10))
    counts = np.bincount(digits.val_labels)
    assert counts.min() >= 35 and counts.max() <= 37
    again, other = load("digits"), load("digits", seed=1)
    assert np.array_equal(again.val_labels, digits.val_labels)
    assert not np.array_equal(other.val_images, digits.val_images)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_reader(tmp_path, compress):
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images(20), compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(20) % 10, compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images(10, seed=1), compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(10), compress)
    ds = load(f"mnist:{tmp_path}")
    assert ds.train_images.shape == (20, 6, 6, 1) and ds.val_images.shape == (10, 6, 6, 1)
    assert np.array_equal(ds.train_images[..., 0], images(20))
    assert ds.num_classes == 10


def test_mnist_truncated_file_says_what_was_expected(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", images(4))
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(EdgecnnError, match=r"train-images-idx3-ubyte: IDX data has"):
        load(f"mnist:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(EdgecnnError, match="not an IDX file"):
        load(f"mnist:{tmp_path}")


def write_cifar_batch(path, n, seed):
    data = images(n, 32, 32, 3, seed).transpose(0, 3, 1, 2).reshape(n, 3072)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": [i % 10 for i in range(n)]}, f)
    return data


def test_cifar10_reader(tmp_path):
    first = write_cifar_batch(tmp_path / "data_batch_1", 12, 0)
    write_cifar_batch(tmp_path / "data_batch_2", 8, 1)
    write_cifar_batch(tmp_path / "test_batch", 5, 2)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    ds = load(f"cifar10:{tmp_path}")
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.val_images.shape == (5, 32, 32, 3)
    assert np.array_equal(ds.train_images[0].transpose(2, 0, 1).reshape(-1), first[0])
    assert ds.class_names[3] == "c3"


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(EdgecnnError, match="not a CIFAR-10 python batch.*refusing"):
        load(f"cifar10:{tmp_path}")


def test_imagefolder_reader(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(np.full((9, 7), value + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load(f"imagefolder:{tmp_path}")
    assert ds.class_names == ("cat", "dog") and ds.channels == 1
    assert len(ds.train_images) + len(ds.val_images) == 10
    assert ds.image_size == (9, 7) and ds.train_images[0].shape == (9, 7, 1)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(EdgecnnError, match="broken.png: not a readable image"):
        load(f"imagefolder:{tmp_path}")
    (tmp_path / "dog" / "broken.png").unlink()
    (tmp_path / "emu").mkdir()
    with pytest.raises(EdgecnnError, match="class folder .*emu holds no PNG/JPEG images"):
        load(f"imagefolder:{tmp_path}")


def test_npz_reader_round_trip_and_errors(tmp_path, digits):
    save_npz(digits, tmp_path / "d.npz")
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    assert np.array_equal(ds.val_images, digits.val_images)
    assert ds.class_names == digits.class_names
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(EdgecnnError, match=r"expected arrays 'x' \(images\) and 'y'"):
        load(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 4)), y=np.zeros(2))
    with pytest.raises(EdgecnnError, match=r"expected images shaped \(N,H,W\)"):
        load(f"npz:{tmp_path / 'shape.npz'}")
    np.savez(tmp_path / "two.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 1]))
    with pytest.raises(EdgecnnError, match="two.npz: 2 images leave none to train on"):
        load(f"npz:{tmp_path / 'two.npz'}")


def test_missing_paths_and_unknown_sources():
    with pytest.raises(EdgecnnError, match="directory not found: /no/such"):
        load("mnist:/no/such")
    with pytest.raises(EdgecnnError, match="file not found"):
        load("npz:/no/such.npz")
    with pytest.raises(EdgecnnError, match="unknown data source 'imagenet'; known: cifar10"):
        load("imagenet:/x")


def test_prepare_normalises_repeats_gray_and_sets_layout():
    record = Preprocessing(input_size=(4, 4), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3,
                           class_names=("a", "b"))
    x = prepare(np.full((2, 4, 4), 255, np.uint8), record)
    assert x.shape == (2, 3, 4, 4) and np.allclose(x, 2.0)
    nhwc = prepare(np.zeros((1, 8, 8, 1), np.float32), record.with_layout("NHWC"))
    assert nhwc.shape == (1, 4, 4, 3) and np.allclose(nhwc, -2.0)
