"""Streaming data: `validate` decodes image files a batch at a time, so its peak memory
does not grow with the number of images."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgecnn.data import load
from edgecnn.data.files import ImageFiles, batches

#: Runs `edgecnn validate ARGS` in this process and prints its exit code and the peak RSS
#: (KiB on Linux) of itself and of its largest child (the predict workers).
_MEASURE = """
import json, resource, sys
from edgecnn.cli import main
sys.argv = ["edgecnn", *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code,
                  "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def write_folder(root, count: int, seed: int = 0):
    """imagefolder root with train/ (one image per class) and val/ (`count` JPEGs), 10
    classes, 96 to 128 px, smooth random colour images."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 1, 128)
    for split, n in (("train", 10), ("val", count)):
        for i in range(n):
            folder = root / split / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = rng.integers(96, 129, 2)
            colour = rng.uniform(0, 255, (3,))
            image = (np.outer(base[:h], base[:w])[..., None] * colour).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{i}.jpg", quality=80)
    return root


def test_batches_prefetch_a_bounded_number_ahead():
    reads = []

    class Recorder(list):
        def __getitem__(self, index):
            reads.append(index.start)
            return super().__getitem__(index)

    seen = []
    for k, batch in enumerate(batches(Recorder(range(100)), 10, list, prefetch=2)):
        seen += batch
        assert len(reads) <= k + 3  # the batch in use and at most two ahead
    assert seen == list(range(100)) and reads == list(range(0, 100, 10))


def test_image_files_are_decoded_when_read(tmp_path):
    root = write_folder(tmp_path, 20)
    ds = load(f"imagefolder:{root}")
    assert isinstance(ds.val_images, ImageFiles) and len(ds.val_images) == 20
    subset = ds.val_images[np.arange(20) % 2 == 0]
    assert isinstance(subset, ImageFiles) and len(subset) == 10
    assert subset[1].shape == ds.val_images[2].shape and subset[1].dtype == np.uint8


def test_validate_peak_memory_does_not_grow_with_the_number_of_images(tmp_path_factory,
                                                                     tiny_artifacts):
    usage = {}
    for count in (1000, 4000):
        root = write_folder(tmp_path_factory.mktemp(f"stream{count}"), count)
        out = root / "v.json"
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, "validate", "--reference",
             str(tiny_artifacts["fp32.onnx"]), "--candidate", str(tiny_artifacts["worse.onnx"]),
             "--data", f"imagefolder:{root}", "--max-drop", "100", "--min-agreement", "0",
             "--json", str(out)], capture_output=True, text=True, timeout=300)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        assert measured["code"] == 0, result.stderr
        assert json.loads(out.read_text())["num_images"] == count
        usage[count] = measured
    growth = {key: (usage[4000][key] - usage[1000][key]) / 1024 for key in
              ("self_kib", "children_kib")}
    # 3,000 more 96-128 px images are 100-150 MB decoded: none of it may stay
    assert growth["self_kib"] < 50 and growth["children_kib"] < 50, (growth, usage)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_loader_gives_the_runtimes_crops(tmp_path, workers):
    """The training side's DataLoader (workers decode) computes the runtime's inputs."""
    pytest.importorskip("torch")
    from edgecnn.data.loader import image_loader
    from edgecnn.data.preprocessing import choose_preprocessing
    from edgecnn.preprocess import prepare

    root = write_folder(tmp_path, 24)
    ds = load(f"imagefolder:{root}", seed=0)
    record = choose_preprocessing(ds, 224)
    assert (record.resize, record.resize_size) == ("whole", None)  # images <= 224 px
    record = choose_preprocessing(ds, 64)
    x = np.concatenate([b.numpy() for b, _ in image_loader(ds.val_images, ds.val_labels,
                                                             record, batch_size=5,
                                                             workers=workers)])
    expected = prepare(ds.val_images, record)
    np.testing.assert_allclose(x, expected, atol=1e-6, rtol=0)
