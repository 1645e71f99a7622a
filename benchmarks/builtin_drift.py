"""How the builtin int8 kernels' rounding compounds through a deep network.

For a zoo model's int8 ONNX and .tflite (made by benchmarks/zoo.py, cached in
~/.cache/edgecnn-zoo), on digits validation images, per op of the .tflite run
on LiteRT's builtin kernels (tflite-runtime 2.14's only int8 path):
- local drift: the share of its outputs that float requantization of the very
  inputs the kernel read would give differently (`builtin_int8.check_builtin`,
  which also checks the kernel against the fixed-point emulation, bit for bit);
- vs ONNX: the share of its outputs unlike onnxruntime's int8 tensor of the same
  name (the QDQ model run unfused, each quantized tensor an output), and the
  share more than one step off.
Then the logits against onnxruntime. Writes benchmarks/builtin_drift.md.

    python benchmarks/builtin_drift.py [--model mobilenet_v2] [--method ptq] [--images 100]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgecnn import quant
from edgecnn.data import load
from edgecnn.runtime.backends.tflite import interpreter
from edgecnn.train import to_tensors
from edgecnn.verify.builtin_int8 import check_builtin
from edgecnn.verify.litert import quantize_input


def onnx_int8_tensors(path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime's quantized value (as int8) of each named float tensor that a
    QuantizeLinear reads or a DequantizeLinear writes, NHWC for 4-D tensors."""
    model = onnx.load(str(path))
    quantized = {n.output[0]: n.input[0] for n in model.graph.node
                 if n.op_type == "DequantizeLinear"}
    quantized.update({n.input[0]: n.output[0] for n in model.graph.node
                      if n.op_type == "QuantizeLinear"})
    wanted = [n for n in names if n in quantized]
    outputs = [quantized[n] for n in wanted]
    model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    values = session.run(outputs, {session.get_inputs()[0].name: x})
    result = {}
    for name, value in zip(wanted, values, strict=True):
        value = value.astype(np.int64) - (128 if value.dtype == np.uint8 else 0)
        result[name] = value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
    return result


def drift_table(tflite: Path, int8_onnx: Path, x: np.ndarray) -> tuple[list[dict], dict]:
    checks = check_builtin(tflite, x)
    it = interpreter(tflite, delegate=False, preserve_all_tensors=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    source = it.get_input_details()[0]
    by_name = {details[int(op["outputs"][0])]["name"]: int(op["outputs"][0])
               for op in it._get_ops_details()}  # op outputs, in execution order
    names = list(by_name)
    reference = onnx_int8_tensors(int8_onnx, names, x)
    off = {n: [0, 0, 0] for n in reference}
    for i, image in enumerate(x):
        it.set_tensor(source["index"], quantize_input(source, image[None].transpose(0, 2, 3, 1)))
        it.invoke()
        for name in reference:
            got = it.get_tensor(by_name[name]).astype(np.int64)
            diff = np.abs(got - reference[name][i:i + 1].reshape(got.shape))
            off[name][0] += int((diff > 0).sum())
            off[name][1] += int((diff > 1).sum())
            off[name][2] += diff.size
    rows = []
    for check in checks:
        differs, far, size = off.get(check.output, (0, 0, 0))
        rows.append({"index": check.index, "op": check.op, "output": check.output,
                     "bit_exact": check.mismatches == 0, "local": check.drift,
                     "vs_onnx": differs / size if size else None,
                     "vs_onnx_far": far / size if size else None})
    logits_name = names[-1]
    differs, far, size = off.get(logits_name, (0, 0, 1))
    return rows, {"logits": logits_name, "differs": differs / size,
                  "within_one": 1 - far / size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--method", default="ptq", choices=["ptq", "qat"])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgecnn-zoo")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("builtin_drift.md"))
    args = parser.parse_args()
    directory = args.cache / args.model / args.method
    _, metadata = quant.load_program(directory / "quantized")
    data = load("digits")
    x, _ = to_tensors(data.val_images[:args.images], data.val_labels[:args.images],
                      metadata.preprocessing)
    rows, logits = drift_table(directory / "model_int8.tflite", directory / "model_int8.onnx",
                               x.numpy())
    lines = [f"# Builtin-kernel drift: {args.model} {args.method.upper()}, "
             f"{args.images} digits images", "",
             "Generated by `python benchmarks/builtin_drift.py`. Per op of the int8 .tflite on "
             "LiteRT's builtin kernels: bit-exact against `builtin_int8`'s fixed-point "
             "emulation; local drift = outputs float requantization of the same inputs gives "
             "differently; vs ONNX = outputs unlike onnxruntime's int8 tensor (any / more "
             "than one step).", "",
             f"Logits ({logits['logits']}) against onnxruntime: {100 * logits['differs']:.2f}% "
             f"differ, {100 * logits['within_one']:.2f}% within one step.", "",
             "| # | op | output | bit-exact | local drift | vs ONNX | > 1 step |",
             "|" + " --- |" * 7]
    for r in rows:
        vs = ("-", "-") if r["vs_onnx"] is None else \
            (f"{100 * r['vs_onnx']:.2f}%", f"{100 * r['vs_onnx_far']:.2f}%")
        lines.append(f"| {r['index']} | {r['op']} | {r['output']} | "
                     f"{'yes' if r['bit_exact'] else 'NO'} | {100 * r['local']:.2f}% | "
                     f"{vs[0]} | {vs[1]} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
