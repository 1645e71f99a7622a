"""The int8 files a user's model becomes, with each runtime's logits: a test helper.

`Int8Files(model, x, out)` quantizes `model` (PTQ on `x`, or another recipe), exports the
int8 QDQ ONNX as `export --int8` ships it and the full-int8 .tflite converted from it, and
keeps the logits of fp32, the fake-quant program, onnxruntime and LiteRT (XNNPACK) on `x`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgecnn import quant
from edgecnn.config import Preprocessing
from edgecnn.export import onnx as onnx_export
from edgecnn.export.tflite import convert
from edgecnn.verify.litert import run_images


def images(n: int, size: int = 8, channels: int = 1, high: float = 2.55, seed: int = 0):
    """Uniform images in [0, high]: an input scale of high / 255 (0.01 by default)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * high


def preprocessing(x: torch.Tensor, classes: int) -> Preprocessing:
    return Preprocessing(tuple(x.shape[2:]), x.shape[1], (0.0,) * x.shape[1],
                         (1.0,) * x.shape[1], [str(i) for i in range(classes)])


class Int8Files:
    """The PTQ program of `model` on `x` (or `recipe`'s, e.g. QAT on `x` and `labels`), its
    int8 QDQ ONNX (as shipped: onnxruntime's variant) and its full-int8 .tflite, with their
    outputs on `x` as float logits."""

    def __init__(self, model: nn.Module, x: torch.Tensor, out: Path, recipe=None,
                 labels: torch.Tensor | None = None) -> None:
        self.model = model.eval()
        recipe = recipe or quant.PTQ(calib_batches=2, batch_size=32)
        with warnings.catch_warnings(record=True) as self.warnings:
            warnings.simplefilter("always")
            self.converted = quant.quantize(model, x[:2], recipe,
                                            train_data=x if labels is None else (x, labels))
            with torch.no_grad():
                self.fp32 = model(x).numpy()
                self.fake_quant = self.converted(x).numpy()
            classes = self.fp32.shape[1]
            self.onnx = onnx_export.export_qdq(self.converted, preprocessing(x, classes),
                                                out / "model_int8.onnx")
            self.tflite = convert(self.onnx, out / "model_int8.tflite")
        session = ort.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])
        self.ort = session.run(None, {"input": x.numpy()})[0]
        raw, (self.scale, self.zero_point) = run_images(self.tflite, x.numpy())
        self.litert = (raw.astype(np.float32) - self.zero_point) * self.scale

    def steps(self, a: np.ndarray, b: np.ndarray) -> float:
        """Largest difference between two logit arrays in output quantization steps
        (to 1e-3: float logits of equal integers differ by float rounding)."""
        return round(float(np.abs(a - b).max() / self.scale), 3)

    def within_one(self, a: np.ndarray, b: np.ndarray) -> float:
        """Share of logits within one output quantization step of each other."""
        return float((np.round(np.abs(a - b) / self.scale) <= 1).mean())

    def caught(self, category: type[Warning]) -> list[str]:
        return [str(w.message) for w in self.warnings if issubclass(w.category, category)]
