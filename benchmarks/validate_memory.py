"""Peak memory of `edgecnn validate` on a large image folder at 224 px: it must not grow
with the number of images.

Writes N JPEG photos (random crops, 256 to 400 px a side, of the photos bundled in
scikit-learn and scikit-image; 1000 classes, N / 1000 per class, as ImageNet's
validation set has 50) and two 1000-class ONNX models at 224x224 with edgecnn metadata
(ImageNet mean/std, shorter side 256 then the centre 224 crop, bilinear), then runs
`edgecnn validate` in a subprocess that reports its own peak RSS and its largest child's
(the predict workers) with `resource.getrusage`. The models are deliberately cheap
(one strided conv, a global pool, a 1000-way classifier) so the run measures the data
path: decoding, cropping, prefetch, the ranking each worker sends back.

    python benchmarks/validate_memory.py [--images 1000,10000,50000] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecnn.config import ArtifactMetadata, Preprocessing
from edgecnn.data.photos import sample_photos
from edgecnn.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from edgecnn.runtime.machine import describe_machine

CLASSES = 1000
MEASURE = """
import json, resource, sys, time
from edgecnn.cli import main
sys.argv = ["edgecnn", *sys.argv[1:]]
start = time.perf_counter()
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def write_model(path: Path, seed: int, noise: float = 0.0) -> Path:
    """(N,3,224,224) -> Conv 3->16 k7 s4 -> Relu -> GlobalAveragePool -> Gemm -> (N,1000)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv = rng.standard_normal((16, 3, 7, 7)).astype(np.float32) * 0.1
    fc = rng.standard_normal((CLASSES, 16)).astype(np.float32)
    fc += noise * np.random.default_rng(seed).standard_normal(fc.shape).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "conv_w"], ["conv"], kernel_shape=[7, 7],
                          strides=[4, 4]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
         helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], transB=1)],
        "memory_probe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(fc, "fc_w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8, producer_name="edgecnn-benchmarks")
    record = Preprocessing(input_size=(224, 224), channels=3, mean=IMAGENET_MEAN,
                           std=IMAGENET_STD, class_names=tuple(f"c{i}" for i in range(CLASSES)),
                           resize="shorter", resize_size=256, interpolation="bilinear")
    helper.set_model_props(proto, {"edgecnn": ArtifactMetadata(record, model="memory_probe")
                                   .to_json()})
    onnx.save(proto, str(path))
    return path


def write_folder(root: Path, count: int, seed: int = 0) -> Path:
    """root/train/cK/ (one small image per class) and root/val/cK/ (`count` JPEGs)."""
    from PIL import Image

    photos = list(sample_photos().values())
    rng = np.random.default_rng(seed)
    for k in range(CLASSES):
        (root / "train" / f"c{k}").mkdir(parents=True)
        (root / "val" / f"c{k}").mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), k % 256, np.uint8)).save(
            root / "train" / f"c{k}" / "0.png")
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        out_h, out_w = (int(v) for v in rng.integers(256, 401, 2))
        crop_h, crop_w = min(h, out_h * 2), min(w, out_w * 2)
        top, left = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
        image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
        image.resize((out_w, out_h), Image.BILINEAR).save(
            root / "val" / f"c{i % CLASSES}" / f"{i}.jpg", quality=85)
    return root


def measure(reference: Path, candidate: Path, data: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, "validate", "--reference", str(reference),
         "--candidate", str(candidate), "--data", f"imagefolder:{data}", "--max-drop", "100",
         "--min-agreement", "0", "--json", str(data / "validate.json")],
        capture_output=True, text=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if measured["code"] != 0:
        raise SystemExit(f"validate failed: {result.stderr}")
    report = json.loads((data / "validate.json").read_text())
    return {**measured, "num_images": report["num_images"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="1000,10000,50000")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name(
        "validate_memory.md"))
    args = parser.parse_args()
    counts = [int(c) for c in args.images.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecnn-memory-") as tmp:
        tmp = Path(tmp)
        reference = write_model(tmp / "reference.onnx", seed=1)
        candidate = write_model(tmp / "candidate.onnx", seed=2, noise=0.05)
        for count in counts:
            start = time.perf_counter()
            data = write_folder(tmp / f"data{count}", count)
            written = time.perf_counter() - start
            size_mb = sum(p.stat().st_size for p in (data / "val").rglob("*.jpg")) / 1e6
            row = {"images": count, "write_seconds": round(written, 1),
                   "jpeg_mb": round(size_mb, 1), **measure(reference, candidate, data)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            subprocess.run(["rm", "-rf", str(data)], check=True)
    machine = describe_machine()
    lines = [f"# `edgecnn validate` peak memory on image folders at 224 px "
             f"({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores (shared with other jobs "
             "while measured); `python benchmarks/validate_memory.py --images "
             f"{args.images}`. Two 1000-class ONNX models (reference and candidate), JPEGs "
             "of 256-400 px cut from scikit-learn's and scikit-image's photos, shorter side "
             "to 256, centre 224 crop; peak RSS from `resource.getrusage` (the command's "
             "process, and the largest of its predict workers).", "",
             "| images | JPEG MB | validate s | images/s (both models) | peak RSS MB, command "
             "| peak RSS MB, worker |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['images']:,} | {r['jpeg_mb']:,.0f} | {r['seconds']:.0f} | "
                     f"{2 * r['images'] / r['seconds']:,.0f} | {r['self_kib'] / 1024:.0f} | "
                     f"{r['children_kib'] / 1024:.0f} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
