"""Tiny, deterministic digits classifiers as real ONNX and TFLite files, for runtime tests.

The classifier is a nearest-class-mean linear model fitted with numpy on the
digits training split (~88% validation top-1): logits_c = mu_c . x - |mu_c|^2 / 2
on the normalized 8x8 image. The ONNX file computes it as an 8x8 Conv +
Flatten (NCHW); the TFLite files as RESHAPE + FULLY_CONNECTED (NHWC), in float
and in full int8 (int8 input and output). Every file carries the "edgecnn"
metadata record, as the real exporters write it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn.config import ArtifactMetadata, Preprocessing, QuantParams
from edgecnn.data import load
from edgecnn.preprocess import prepare


@dataclass(frozen=True)
class LinearClassifier:
    """weights (classes, 64) and bias (classes,) over the flattened normalized image."""

    weights: np.ndarray
    bias: np.ndarray
    record: Preprocessing  # NHWC; exporters switch the layout per format
    feature_range: tuple[float, float]
    logit_range: tuple[float, float]

    def logits(self, images: np.ndarray) -> np.ndarray:
        x = prepare(images, self.record).reshape(len(images), -1)
        return x @ self.weights.T + self.bias

    def perturbed(self, noise: float, seed: int = 1) -> LinearClassifier:
        """A worse model: Gaussian noise of `noise` x the weights' std added to the weights."""
        rng = np.random.default_rng(seed)
        w = self.weights + rng.standard_normal(self.weights.shape) * noise * self.weights.std()
        return LinearClassifier(w.astype(np.float32), self.bias, self.record,
                                self.feature_range, self.logit_range)


@functools.lru_cache(maxsize=1)
def digits_classifier() -> LinearClassifier:
    """Fit the nearest-class-mean classifier on the digits training split (seed 0)."""
    data = load("digits")
    mean, std = data.channel_stats()
    record = Preprocessing((8, 8), 1, mean, std, data.class_names, layout="NHWC")
    x = prepare(data.train_images, record).reshape(len(data.train_images), -1)
    mu = np.stack([x[data.train_labels == c].mean(0) for c in range(data.num_classes)])
    weights, bias = mu.astype(np.float32), (-0.5 * (mu ** 2).sum(1)).astype(np.float32)
    logits = x @ weights.T + bias
    return LinearClassifier(weights, bias, record, (float(x.min()), float(x.max())),
                            (float(logits.min()), float(logits.max())))


def metadata_json(model: LinearClassifier, layout: str, precision: str = "fp32",
                  input_quant: QuantParams | None = None,
                  output_quant: QuantParams | None = None) -> str:
    return ArtifactMetadata(model.record.with_layout(layout), model="ncm_digits",
                            precision=precision, input_quant=input_quant,
                            output_quant=output_quant).to_json()


def write_onnx(model: LinearClassifier, path: Path, *, batch: int | None = None,
               metadata: bool = True) -> Path:
    """Input (N,1,8,8) float -> Conv 8x8 -> Flatten -> logits (N,classes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    classes = len(model.bias)
    n = batch if batch is not None else "N"
    conv_w = model.weights.reshape(classes, 1, 8, 8)  # C=1: NHWC and NCHW flatten alike
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W", "B"], ["conv"], kernel_shape=[8, 8]),
         helper.make_node("Flatten", ["conv"], ["logits"], axis=1)],
        "ncm_digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, classes])],
        [numpy_helper.from_array(conv_w, "W"), numpy_helper.from_array(model.bias, "B")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8, producer_name="edgecnn-tests")
    if metadata:
        helper.set_model_props(proto, {"edgecnn": metadata_json(model, "NCHW")})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def affine_quant(lo: float, hi: float) -> QuantParams:
    """int8 parameters covering [lo, hi] (always including 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0
    return QuantParams(scale, int(np.clip(round(-128 - lo / scale), -128, 127)))
