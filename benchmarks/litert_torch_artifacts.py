"""litert-torch's float and PTQ int8 .tflite of the zoo's mobilenet_v2 at 224, for comparison.

Runs in its own environment, because litert-torch pulls jax, transformers and
litert-converter (2 GB) that edgecnn does not need:

    python3 -m venv lt && lt/bin/pip install torch==2.13.0 && lt/bin/pip install litert-torch
    PYTHONPATH=. lt/bin/python benchmarks/litert_torch_artifacts.py --out DIR

writes DIR/litert_torch_fp32.tflite, DIR/litert_torch_int8.tflite (litert-torch's
PT2EQuantizer, symmetric per-channel, static; the same random calibration images
as benchmarks/zoo.py's latency models) and DIR/litert_torch.json (conversion
times). With --checkpoint (the zoo's digits-trained mobilenet_v2,
~/.cache/edgecnn-zoo/mobilenet_v2/checkpoint; needs scikit-learn there) it also
writes DIR/litert_torch_int8_digits.tflite, calibrated on the zoo's 512 training
images, and DIR/litert_torch_int8_digits_fake_quant.npy, its own fake-quant
logits on the 359 validation images, for `zoo.py`'s parity table. Then, in
edgecnn's environment, bench them beside edgecnn's own files:

    edgecnn bench DIR/*.tflite ~/.cache/edgecnn-zoo/mobilenet_v2/latency224/*.tflite \
        --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import litert_torch
import torch
from litert_torch.quantize import pt2e_quantizer, quant_config
from torchao.quantization.pt2e import quantize_pt2e

from edgecnn.models import create_model

CALIB_IMAGES = 512  # as benchmarks/zoo.py


def int8_convert(model: torch.nn.Module, calibration: torch.Tensor, out: Path
                 ) -> torch.nn.Module:
    """litert-torch's PT2E int8 conversion; returns the converted fake-quant program."""
    sample = (calibration[:1],)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, sample).module(), quantizer)
    with torch.no_grad():
        for image in calibration:  # the export is specialized to batch 1
            prepared(image[None])
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, sample,
                         quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
                         ).export(str(out))
    return converted


def digits_int8(checkpoint: Path, out: Path) -> None:
    """The digits-trained model through litert-torch's int8 path, and its fake-quant logits."""
    import numpy as np

    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.data import load
    from edgecnn.train import to_tensors

    model, config = load_checkpoint(checkpoint)
    data = load("digits")
    calibration, _ = to_tensors(data.train_images[:CALIB_IMAGES],
                                data.train_labels[:CALIB_IMAGES], config.preprocessing)
    val, _ = to_tensors(data.val_images, data.val_labels, config.preprocessing)
    converted = int8_convert(model, calibration, out / "litert_torch_int8_digits.tflite")
    with torch.no_grad():
        logits = torch.cat([converted(x[None]) for x in val]).numpy()
    np.save(out / "litert_torch_int8_digits_fake_quant.npy", logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path,
                        help="also convert this digits-trained checkpoint (int8, for parity)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)  # as benchmarks/zoo.py's latency models
    model = create_model(args.model).eval()
    calib = torch.randn(16, 3, 224, 224)
    sample = (calib[:1],)
    seconds = {}

    start = time.perf_counter()
    litert_torch.convert(model, sample).export(str(args.out / "litert_torch_fp32.tflite"))
    seconds["fp32"] = time.perf_counter() - start

    start = time.perf_counter()
    int8_convert(model, calib, args.out / "litert_torch_int8.tflite")
    seconds["int8"] = time.perf_counter() - start
    if args.checkpoint:
        digits_int8(args.checkpoint, args.out)

    record = {"model": args.model, "litert_torch": litert_torch.__version__,
              "conversion_seconds": seconds}
    (args.out / "litert_torch.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
