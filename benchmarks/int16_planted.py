"""int8 vs `--keep-float` vs `--int16` on the planted models (tests/planted_model.py).

For `planted_net` and `planted_dw_net` at factor 300 (trained 3 epochs on digits,
seed 0, planted, then PTQ with 8 calibration batches as the tests do): the top-1
drop of the int8 ONNX and .tflite against the fp32 ONNX on the digits validation
split, with the planted pair plain int8, kept float, and moved to int16 (16x8);
then the p50 latency of the three .tflite files on LiteRT (XNNPACK on) and of
the three .onnx files on onnxruntime, at one thread. Writes
benchmarks/int16_planted.md.

    python benchmarks/int16_planted.py [--out DIR] [--runs 2000]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"planted_net": r"block\.(conv|proj)", "planted_dw_net": r"block\.(conv|dw)"}
CHOICES = {"int8": {}, "keep-float": "keep_float", "int16": "int16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgecnn-int16-planted"))
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    warnings.simplefilter("ignore")
    from planted_model import build_planted

    from edgecnn.artifacts import export_artifacts
    from edgecnn.quant.recipe import PTQ
    from edgecnn.quant.run import quantize_checkpoint
    from edgecnn.quant.spec import QuantConfig
    from edgecnn.runtime.bench import BenchConfig, run_bench
    from edgecnn.runtime.tables import markdown_table, signed
    from edgecnn.runtime.validate import Bounds, run_validate

    drops, latency = [], []
    for factory, pair in PAIRS.items():
        root = args.out / factory
        planted = build_planted(root, factor=300.0, factory=factory)
        files = {}
        for choice, field in CHOICES.items():
            out = root / choice
            config = QuantConfig(**({field: (pair,)} if field else {}))
            quantize_checkpoint(planted["checkpoint"], out / "q", PTQ(calib_batches=8),
                                config=config, show_progress=False)
            files[choice] = export_artifacts(planted["checkpoint"], out, quantized=out / "q")
            report = run_validate(planted["fp32.onnx"], list(files[choice]), "digits", Bounds())
            drops.append([factory, pair, choice,
                          *[signed(c.drop) for c in report.candidates]])
        for index, backend in ((1, "ai_edge_litert"), (0, "onnxruntime")):
            paths = [files[c][index] for c in CHOICES]
            bench = run_bench(paths, BenchConfig(threads=(1,), runs=args.runs,
                                                 backend=backend), progress=False)
            latency.append([factory, backend, *[f"{r.p50_ms:.3f}" for r in bench.results]])
    lines = ["# int8 vs --keep-float vs --int16 on the planted models", "",
             "`python benchmarks/int16_planted.py` (digits, PTQ, factor 300; drops in points "
             "against the fp32 ONNX, validation split).", "",
             markdown_table(["model", "pair", "choice", "int8.onnx drop", "int8.tflite drop"],
                            drops).rstrip(), "",
             "p50 ms at one thread (LiteRT with XNNPACK, which runs no int16 op):", "",
             markdown_table(["model", "backend", *CHOICES], latency).rstrip(), ""]
    (ROOT / "benchmarks" / "int16_planted.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
