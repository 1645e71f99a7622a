"""Preprocessing as practised: Pillow resize (antialiased), shorter side + centre crop,
mean/std defaults, image folders at their own sizes, old records still meaning the same."""

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from edgecnn.config import Preprocessing
from edgecnn.data import load
from edgecnn.data.files import ImageFiles, batches
from edgecnn.data.photos import sample_photos
from edgecnn.data.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessOptions,
    choose_preprocessing,
)
from edgecnn.errors import EdgecnnError
from edgecnn.preprocess import crops, prepare

NAMES = tuple(str(i) for i in range(10))


def record(**kw) -> Preprocessing:
    base = dict(input_size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                class_names=NAMES)
    return Preprocessing(**{**base, **kw})


@pytest.fixture(scope="module")
def photos():
    """Real photos of different sizes and aspect ratios (scikit-learn's two, 427x640, and
    scikit-image's when installed)."""
    return sample_photos()


def by_hand(photo: np.ndarray, rec: Preprocessing) -> np.ndarray:
    """torchvision's PIL path written out: Resize(resize_size) (short side, long side
    truncated) + CenterCrop(input), or Resize((h, w)) for the whole image."""
    filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[rec.interpolation]
    h, w = photo.shape[:2]
    image = Image.fromarray(photo)
    if rec.resize == "whole":
        return np.asarray(image.resize(rec.input_size[::-1], filt))
    s = rec.resize_size
    size = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
    image = image.resize(size[::-1], filt)
    top, left = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
    return np.asarray(image.crop((left, top, left + 224, top + 224)))


@pytest.mark.parametrize("rec", [record(resize="shorter", resize_size=256),
                                 record(resize="shorter", resize_size=256,
                                        interpolation="bicubic"),
                                 record(resize="whole", interpolation="bicubic")],
                         ids=["shorter-bilinear", "shorter-bicubic", "whole-bicubic"])
def test_photo_crops_are_torchvisions_pil_crops(photos, rec):
    names = sorted(photos)
    cut = crops([photos[n] for n in names], rec)
    assert cut.dtype == np.uint8 and cut.shape == (len(names), 224, 224, 3)
    for i, name in enumerate(names):
        assert np.array_equal(cut[i], by_hand(photos[name], rec)), name
    x = prepare([photos[n] for n in names], rec)
    expected = (cut.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x, expected.transpose(0, 3, 1, 2), atol=1e-6, rtol=0)


def test_downscaling_is_antialiased():
    # a one-pixel checkerboard downscaled 8x: antialiased it is flat grey; point
    # sampling (the old numpy resize) gives back black and white pixels
    board = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    out = crops(board[None, ..., None], record(channels=1, mean=(0.5,), std=(0.5,),
                                                input_size=(32, 32)))
    assert out.shape == (1, 32, 32, 1) and abs(float(out.mean()) - 127.5) < 1.0
    assert int(out.max()) - int(out.min()) <= 2


def test_upscaling_matches_the_old_half_pixel_bilinear_resize(digits):
    # what records without the new keys meant: the whole image, bilinear, half-pixel
    # centres. Pillow computes that within one grey level (its two passes each round to
    # uint8), about as often as not exactly.
    images = digits.val_images[:50].astype(np.float64)
    pos = (np.arange(32) + 0.5) * (8 / 32) - 0.5
    pos = np.clip(pos, 0, 7)
    lo = np.floor(pos).astype(int)
    hi, f = np.minimum(lo + 1, 7), pos - np.floor(pos)
    rows = images[:, lo] * (1 - f)[None, :, None, None] + images[:, hi] * f[None, :, None, None]
    old = rows[:, :, lo] * (1 - f)[None, None, :, None] + rows[:, :, hi] * f[None, None, :, None]
    new = crops(digits.val_images[:50], record(channels=1, mean=(0.5,), std=(0.5,),
                                               input_size=(32, 32)))
    error = np.abs(new - old)
    assert error.max() <= 1.0 and np.mean(error <= 0.5) > 0.9


def test_a_record_without_the_new_keys_means_whole_image_bilinear(tmp_path):
    old = {"input_size": [32, 32], "channels": 1, "mean": [0.3], "std": [0.2],
           "class_names": list(NAMES), "layout": "NCHW"}
    rec = Preprocessing.from_dict(old)
    assert (rec.resize, rec.resize_size, rec.interpolation) == ("whole", None, "bilinear")
    # a checkpoint's config.json written before the keys existed still loads
    from edgecnn.checkpoint import read_config

    (tmp_path / "config.json").write_text(json.dumps(
        {"model": "dsc_net", "preprocessing": old, "options": {"num_classes": 10}}))
    assert read_config(tmp_path).preprocessing == rec
    # and the new record round-trips
    new = record(resize="shorter", resize_size=256, interpolation="bicubic")
    assert Preprocessing.from_json(new.to_json()) == new


@pytest.mark.parametrize("kw,message", [
    ({"resize": "shorter"}, "resize 'shorter' needs resize_size"),
    ({"resize": "shorter", "resize_size": 200}, "resize_size 200 is smaller than the crop"),
    ({"resize_size": 256}, "resize_size applies only to resize 'shorter'"),
    ({"resize": "squash"}, "resize must be one of whole, shorter"),
    ({"interpolation": "nearest"}, "interpolation must be one of bilinear, bicubic"),
])
def test_bad_records_are_refused(kw, message):
    with pytest.raises(EdgecnnError, match=message):
        record(**kw)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, photos):
    """imagefolder:DIR of real photos at their own sizes (JPEG and PNG), two classes."""
    root = tmp_path_factory.mktemp("photos")
    for i, (name, photo) in enumerate(sorted(photos.items())):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(photo).save(folder / f"{name}.png")
        Image.fromarray(photo[::2, ::3]).save(folder / f"{name}_small.jpg", quality=90)
    return root


def test_imagefolder_keeps_each_images_own_size(photo_folder, photos):
    ds = load(f"imagefolder:{photo_folder}", val_fraction=0.5)
    images = [*[ds.train_images[i] for i in range(len(ds.train_images))],
              *[ds.val_images[i] for i in range(len(ds.val_images))]]
    sizes = {im.shape for im in images}
    expected = {p.shape for p in photos.values()} | {p[::2, ::3].shape for p in photos.values()}
    assert sizes == expected and len(sizes) > 2  # nothing squeezed to the first image's size
    assert isinstance(ds.val_images, ImageFiles) and ds.channels == 3
    # the defaults for a 3-channel model at 224 px on photos: ImageNet's, shorter side 256
    rec = choose_preprocessing(ds, 224)
    assert (rec.mean, rec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (rec.resize, rec.resize_size, rec.interpolation) == ("shorter", 256, "bilinear")
    # the same crops from the file sequence, a batch at a time with prefetch, as from arrays
    streamed = np.concatenate(list(batches(ds.val_images, 3, lambda b: crops(b, rec))))
    direct = crops([ds.val_images[i] for i in range(len(ds.val_images))], rec)
    assert np.array_equal(streamed, direct)


def test_preprocessing_defaults_and_user_choices(digits):
    small = choose_preprocessing(digits, 32)
    assert small.resize == "whole" and small.mean == digits.channel_stats()[0]
    assert choose_preprocessing(digits, 224).resize == "whole"  # grey: own statistics
    chosen = choose_preprocessing(digits, 32, PreprocessOptions(mean=(0.1,), std=(0.3,),
                                                                interpolation="bicubic"))
    assert (chosen.mean, chosen.std, chosen.interpolation) == ((0.1,), (0.3,), "bicubic")
    shorter = choose_preprocessing(digits, 32, PreprocessOptions(resize_size=40))
    assert (shorter.resize, shorter.resize_size) == ("shorter", 40)
    with pytest.raises(EdgecnnError, match=r"^mean and std have 3 values but the data has 1"):
        choose_preprocessing(digits, 32, PreprocessOptions(mean=(0.5,) * 3, std=(0.2,) * 3))
    with pytest.raises(EdgecnnError, match="^mean and std go together") as error:
        PreprocessOptions(mean=(0.5,))
    assert error.value.for_cli().startswith("--mean and --std go together")  # the CLI's words


def test_preprocessing_flags_are_checked_before_any_work(edgecnn_cmd, tmp_path):
    for argv, message in (
            (["train", "dsc_net", "--mean", "0.5"], "--mean and --std go together"),
            (["train", "dsc_net", "--mean", "a,b,c", "--std", "1,1,1"], "--mean takes one "),
            (["export", "--int8", "dsc_net", "--resize", "crop"], "--resize must be one of"),
            (["export", "--int8", "dsc_net", "--resize-size", "4"],
             "--resize-size must be an integer in"),
            (["export", "dsc_net", "--checkpoint", str(tmp_path), "--interpolation", "bicubic"],
             "export without --int8 uses the checkpoint's record")):
        result = subprocess.run([*edgecnn_cmd, *argv], capture_output=True, text=True,
                                cwd=tmp_path, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_nchw_input_has_canonical_strides_for_one_channel():
    """A transposed size-1 channel axis keeps its NHWC stride in numpy; torch reads that as
    channels-last and torch.export then traces as_strided views, which no int8 converter
    lowers (dsc_net on grey digits stopped at a Gather). The NCHW input is a C-order copy."""
    import torch

    from edgecnn.config import Preprocessing
    from edgecnn.preprocess import normalize

    record = Preprocessing(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,),
                           class_names=("a", "b"), layout="NCHW")
    x = torch.from_numpy(normalize(np.zeros((4, 8, 8, 1), np.uint8), record))
    assert x.shape == (4, 1, 8, 8) and x.stride() == (64, 64, 8, 1)


@pytest.mark.parametrize("channels, size", [(1, 32), (3, 32)])
def test_a_model_of_other_channels_gets_the_converted_data_statistics(channels, size):
    """A model whose input channels differ from the data's (grey repeated to RGB, RGB to
    luma): the record's mean / std are those of the converted training images, so the
    model's inputs have mean 0 and std 1 per channel as with the data's own channels."""
    from edgecnn.data.dataset import make_dataset

    rng = np.random.default_rng(0)
    data_channels = 4 - channels
    images = rng.integers(0, 256, (40, size, size, data_channels), dtype=np.uint8)
    images[..., 0] //= 2  # channels of different statistics
    ds = make_dataset("t", images, np.arange(40) % 2, None, seed=0, val_fraction=0.2)
    rec = choose_preprocessing(ds, size, channels=channels)
    assert rec.channels == channels and len(rec.mean) == channels == len(rec.std)
    x = prepare(ds.train_images, rec)
    assert x.shape[1] == channels
    np.testing.assert_allclose(x.mean((0, 2, 3)), 0, atol=2e-3)
    np.testing.assert_allclose(x.std((0, 2, 3)), 1, atol=2e-3)
    with pytest.raises(EdgecnnError, match=rf"^mean and std have 2 values but the model's "
                                           rf"input has {channels} channel"):
        choose_preprocessing(ds, size, PreprocessOptions(mean=(0.5,) * 2, std=(0.2,) * 2),
                             channels=channels)
