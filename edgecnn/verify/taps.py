"""What `inspect` reads from an artifact: its quantized tensors ("taps") and their layers.

A tap is an int8 (or uint8) activation tensor of the candidate. Its layer is
the set of operators that compute it from other taps (or from the model
input); the layer's own error is measured by feeding it the fp32 reference's
values of those taps, quantized with their parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecnn.qmath import affine_dequantize, affine_quantize

#: Activations a layer ends with (fused into the op before them in int8 kernels).
ACTIVATIONS = frozenset({"Relu", "Clip", "Relu6", "RELU", "RELU6", "RELU_N1_TO_1"})
#: Ops that pass a layer's name on (the weights sit on the op before them).
PASS_THROUGH = frozenset({"Relu", "Clip", "Relu6", "RELU", "RELU6", "RELU_N1_TO_1", "PAD",
                          "Pad", "Reshape", "RESHAPE", "Flatten", "Squeeze", "Unsqueeze",
                          "Identity", "DequantizeLinear", "QuantizeLinear"})


@dataclass(frozen=True)
class Tap:
    """One quantized tensor of the candidate.

    name: the float tensor it stands for (ONNX: the QuantizeLinear's input; TFLite: its
    own name), which is how it finds its fp32 counterpart (or one of `aliases`).
    tensor: where its integers are read. op: the layer's main operator. inputs: names
    of the taps its layer reads. reads_model_input: the layer also reads the (float)
    model input. ops: how many operators the layer has (0 for a quantized model input).
    """

    name: str
    tensor: str
    op: str
    scale: float
    zero_point: int
    dtype: np.dtype
    inputs: tuple[str, ...] = ()
    reads_model_input: bool = False
    ops: int = 1
    aliases: tuple[str, ...] = ()  # other names of the same values (ONNX: the DQ outputs)
    kind: str = ""  # `kind` of the layer's last op (activations, Q/DQ aside): for alignment

    @property
    def limits(self) -> tuple[int, int]:
        info = np.iinfo(self.dtype)
        return int(info.min), int(info.max)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """scale * (q - zero_point), float32."""
        return affine_dequantize(raw, self.scale, self.zero_point)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """`qmath.affine_quantize` with this tap's parameters."""
        return affine_quantize(x, self.scale, self.zero_point, self.dtype)


#: ONNX and TFLite op types -> one name per kind of layer, to align graphs of both formats.
KINDS = {
    "Conv": "conv", "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "conv", "ConvTranspose": "deconv",
    "TRANSPOSE_CONV": "deconv", "Gemm": "dense", "MatMul": "dense", "FULLY_CONNECTED": "dense",
    "Add": "add", "ADD": "add", "Sub": "sub", "SUB": "sub", "Mul": "mul", "MUL": "mul",
    "GlobalAveragePool": "mean", "ReduceMean": "mean", "MEAN": "mean",
    "AveragePool": "avgpool", "AVERAGE_POOL_2D": "avgpool", "MaxPool": "maxpool",
    "MAX_POOL_2D": "maxpool", "Sigmoid": "sigmoid", "LOGISTIC": "sigmoid",
    "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish", "HARD_SWISH": "hardswish",
    "Concat": "concat", "CONCATENATION": "concat", "Softmax": "softmax", "SOFTMAX": "softmax",
    "Tanh": "tanh", "TANH": "tanh", "Reshape": "reshape", "RESHAPE": "reshape",
    "Flatten": "reshape", "Pad": "pad", "PAD": "pad", "input": "input",
    "RSQRT": "reciprocal",  # ONNX Sqrt -> Reciprocal (torch's rsqrt)
}


#: kinds whose constant inputs are weights (a layer is named after them)
WEIGHTED = frozenset({"conv", "deconv", "dense"})


def kind(op: str) -> str:
    """The format-free kind of an op type ("CONV_2D" and "Conv" are both "conv")."""
    return KINDS.get(op, op.lower())


def last_kind(ops: list[str]) -> str:
    """The kind of what a layer ends with, activations and (de)quantization aside."""
    plain = [op for op in ops if op not in ACTIVATIONS
             and op not in ("QuantizeLinear", "DequantizeLinear")]
    return kind(plain[-1]) if plain else "input"


def main_op(ops: list[str]) -> str:
    """The op that names a layer: the last one that is not a pass-through ("input" for a
    layer that only quantizes the model input)."""
    for op in reversed(ops):
        if op not in PASS_THROUGH:
            return op
    plain = [op for op in ops if op not in ("QuantizeLinear", "DequantizeLinear")]
    return plain[-1] if plain else "input"
