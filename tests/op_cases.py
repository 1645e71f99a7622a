"""The per-op parity cases: tiny single-op ONNX models, each with the TFLite ops it must
lower to, and the shared helpers of the modules that run them (test_tflite_ops on LiteRT,
test_tflite_builtin_int8 against the builtin-kernel emulation, test_tflite_pi on
tflite-runtime 2.14). A test row is one `Case` in `CASES`.

QDQ models are made by `onnxruntime.quantization.quantize_static` (per-channel, int8
activations and weights) from the float model, once per case per test run (`quantize`).
"""


from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edgecnn.runtime.backends.tflite import interpreter
from edgecnn.verify.litert import quantize_input

RNG = np.random.default_rng(0)
FLOAT_RTOL = 1e-5


def _w(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


@dataclass(frozen=True)
class Case:
    """One single-op model: its nodes and initializers, NCHW inputs, expected TFLite ops."""

    id: str
    nodes: Callable[[], tuple[list[onnx.NodeProto], dict[str, np.ndarray]]]
    inputs: dict[str, tuple[int, ...]]
    ops: dict[str, int]
    input_scale: dict[str, float] = field(default_factory=dict)
    input_mean: dict[str, float] = field(default_factory=dict)  # inputs are N(mean, scale)
    qdq_ops: dict[str, int] | None = None  # when the int8 graph differs
    qdq: str = ""  # a reason when the QDQ variant is excluded
    opset: int = 18
    #: the output's shape, for an op ONNX shape inference cannot follow (a function op)
    output_shape: tuple[int, ...] | None = None
    #: tensors the QDQ model leaves float (their Q/DQ pair removed), as edgecnn's quantizer
    #: leaves the inside of one aten op that ONNX writes as two (rsqrt: Sqrt -> Reciprocal)
    float_tensors: tuple[str, ...] = ()
    quantized_ops: tuple[str, ...] = ()  # op types quantized here beyond QDQ_OPS
    #: keep a Relu / Clip after a quantized producer (quantize_static folds it into the
    #: producer's range otherwise): its input and output quantized
    keep_activations: bool = False

    def model(self) -> onnx.ModelProto:
        nodes, inits = self.nodes()
        graph = helper.make_graph(
            nodes, self.id,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
             for n, s in self.inputs.items()],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, self.output_shape)],
            initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                 ir_version=10 if self.opset >= 21 else 9)

    def feeds(self, seed: int = 1) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {n: (rng.standard_normal(s) * self.input_scale.get(n, 1.0)
                    + self.input_mean.get(n, 0.0)).astype(np.float32)
                for n, s in self.inputs.items()}


def node(op: str, inputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, ["y"], **attrs)


def conv(c_in: int, c_out: int, k: int, *, bias: bool = True, group: int = 1, **attrs):
    def build():
        inits = {"w": _w(c_out, c_in // group, k, k)}
        if bias:
            inits["b"] = _w(c_out)
        return [node("Conv", ["x", "w", *(["b"] if bias else [])], group=group, **attrs)], inits
    return build


def plain(op: str, inputs: list[str], inits: dict[str, np.ndarray] | None = None, **attrs):
    return lambda: ([node(op, inputs, **attrs)], dict(inits or {}))


NO_STANDALONE_ACTIVATION = (
    "quantize_static leaves a Relu/Clip without a quantized producer float; with one it folds "
    "them into the producer's range (conv_relu*_fused). test_tflite_qdq covers RELU in int8")
X = {"x": (1, 3, 8, 8)}
X8 = {"x": (1, 8, 6, 6)}
CONV = {"CONV_2D": 1}
MEAN_KEEPDIMS = {"MEAN": 1, "RESHAPE": 1}
#: a normalization's float chain (`ops.norm._normalize`): mean, centre, square, mean, + eps,
#: sqrt, divide, x scale, + bias
NORM_OPS = {"MEAN": 2, "SUB": 1, "MUL": 2, "ADD": 2, "SQRT": 1, "DIV": 1}
#: GroupNorm(G, C), 1 < G < C: the chain between a RESHAPE to the groups and one back
GROUP_NORM_OPS = {**NORM_OPS, "RESHAPE": 2}
#: quantize_static gives a max its own output scale; the kernel copies its input's
#: (edgecnn's quantizer shares them: test_quant_spec)
REQUANTIZED_MAX = {"REDUCE_MAX": 1, "QUANTIZE": 1}
NORM_ALONE = ("quantize_static quantizes no normalization: alone, the QDQ model is the float "
              "one; layer_norm_channels_last (int8 transposes around it) covers the island")

CASES = [
    Case("conv3x3_bias_same", conv(3, 8, 3, pads=[1, 1, 1, 1]), X, CONV),
    Case("conv3x3_nobias_stride2_pad", conv(3, 8, 3, bias=False, strides=[2, 2],
                                            pads=[1, 1, 1, 1]), X, {"CONV_2D": 1, "PAD": 1}),
    Case("conv3x3_stride2_odd_same", conv(3, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1]),
         {"x": (1, 3, 9, 9)}, CONV),
    Case("conv3x3_asymmetric_pads", conv(3, 8, 3, pads=[0, 1, 2, 1]), X,
         {"CONV_2D": 1, "PAD": 1}),
    Case("conv1x1_valid", conv(3, 8, 1), X, CONV),
    Case("conv3x3_dilated", conv(3, 8, 3, dilations=[2, 2], pads=[2, 2, 2, 2]), X, CONV),
    Case("conv_auto_pad_same_upper", conv(3, 8, 3, strides=[2, 2], auto_pad="SAME_UPPER"), X,
         CONV),
    Case("conv3x3_grouped", conv(8, 16, 3, group=4, pads=[1, 1, 1, 1]), X8, CONV),
    Case("depthwise3x3", conv(8, 8, 3, group=8, pads=[1, 1, 1, 1]), X8,
         {"DEPTHWISE_CONV_2D": 1}),
    Case("depthwise_multiplier2_stride2", conv(4, 8, 3, group=4, strides=[2, 2],
                                               pads=[1, 1, 1, 1]),
         {"x": (1, 4, 8, 8)}, {"DEPTHWISE_CONV_2D": 1, "PAD": 1}),
    Case("conv_relu_fused", lambda: (
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         node("Relu", ["c"])], {"w": _w(8, 3, 3, 3), "b": _w(8)}), X, CONV),
    Case("conv_relu6_fused", lambda: (
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         node("Clip", ["c", "lo", "hi"])],
        {"w": _w(8, 3, 3, 3), "b": _w(8), "lo": np.float32(0), "hi": np.float32(6)}), X, CONV),
    Case("gemm", plain("Gemm", ["x", "w", "b"], {"w": _w(10, 16), "b": _w(10)}, transB=1),
         {"x": (1, 16)}, {"FULLY_CONNECTED": 1}),
    Case("gemm_untransposed", plain("Gemm", ["x", "w", "b"], {"w": _w(16, 10), "b": _w(10)}),
         {"x": (2, 16)}, {"FULLY_CONNECTED": 1}),
    Case("matmul", plain("MatMul", ["x", "w"], {"w": _w(16, 10)}), {"x": (2, 16)},
         {"FULLY_CONNECTED": 1}),
    # a Linear on tokens [N, L, C] as torch.onnx writes it: one FULLY_CONNECTED (keep_num_dims)
    # with the Add's bias; quantize_static quantizes the product, so int8 keeps the ADD
    Case("linear_tokens", lambda: (
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "wt"], ["p"]), node("Add", ["p", "b"])],
        {"w": _w(10, 16), "b": _w(10)}), {"x": (1, 6, 16)}, {"FULLY_CONNECTED": 1},
         qdq_ops={"FULLY_CONNECTED": 1, "ADD": 1}),
    # a Linear on a channels-last tensor (ConvNeXt): a 1x1 CONV_2D on the NCHW tensor with
    # the Add's bias, no TRANSPOSE (the product left float, as edgecnn's quantizer leaves the
    # inside of a Linear: quantize_static's own Q/DQ on it would round twice)
    Case("linear_channels_last", lambda: (
        [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
         helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
         helper.make_node("MatMul", ["t", "wt"], ["p"]),
         helper.make_node("Add", ["p", "b"], ["l"]),
         node("Transpose", ["l"], perm=[0, 3, 1, 2])],
        {"w": _w(12, 8), "b": _w(12) + 1}), X8, {"CONV_2D": 1}, float_tensors=("p",)),
    Case("matmul_two_activations", plain("MatMul", ["a", "b"]),
         {"a": (1, 8, 12), "b": (1, 12, 3)}, {"BATCH_MATMUL": 1}, input_scale={"b": 0.5}),
    Case("add_const_channels", plain("Add", ["x", "c"], {"c": _w(8, 1, 1)}), X8, {"ADD": 1}),
    Case("add_two_inputs", plain("Add", ["a", "b"]), {"a": (1, 8, 6, 6), "b": (1, 8, 6, 6)},
         {"ADD": 1}, input_scale={"b": 3.0}),
    Case("mul_squeeze_excite", plain("Mul", ["a", "s"]), {"a": (1, 8, 6, 6), "s": (1, 8, 1, 1)},
         {"MUL": 1}, input_scale={"s": 0.5}),
    Case("expand_then_mul", lambda: (  # x * s.expand_as(x): MUL broadcasts s itself
        [helper.make_node("Expand", ["s", "shape"], ["e"]), node("Mul", ["a", "e"])],
        {"shape": np.array([1, 8, 6, 6], np.int64)}), {"a": (1, 8, 6, 6), "s": (1, 8, 1, 1)},
         {"MUL": 1}, input_scale={"s": 0.5}, quantized_ops=("Expand",)),
    Case("mul_scalar", plain("Mul", ["x", "c"], {"c": np.float32(0.5)}), X8, {"MUL": 1}),
    Case("sub_const", plain("Sub", ["x", "c"], {"c": _w(8, 1, 1)}), X8, {"SUB": 1}),
    # keep_dims means are MEAN + RESHAPE: TFLite's keep_dims int8 kernel is biased
    Case("global_average_pool", plain("GlobalAveragePool", ["x"]), X8, MEAN_KEEPDIMS),
    Case("reduce_mean_keepdims", plain("ReduceMean", ["x", "axes"],
                                       {"axes": np.array([2, 3], np.int64)}), X8, MEAN_KEEPDIMS),
    Case("reduce_mean_flat", plain("ReduceMean", ["x", "axes"],
                                   {"axes": np.array([-1, -2], np.int64)}, keepdims=0),
         X8, {"MEAN": 1}),
    # max over channels (CBAM's spatial branch) and over H, W (a global max pool)
    Case("reduce_max_channels", plain("ReduceMax", ["x", "axes"],
                                      {"axes": np.array([1], np.int64)}), X8,
         {"REDUCE_MAX": 1}, quantized_ops=("ReduceMax",), qdq_ops=REQUANTIZED_MAX),
    Case("reduce_max_global_flat", plain("ReduceMax", ["x", "axes"],
                                         {"axes": np.array([2, 3], np.int64)}, keepdims=0),
         X8, {"REDUCE_MAX": 1}, quantized_ops=("ReduceMax",), qdq_ops=REQUANTIZED_MAX),
    Case("average_pool2x2", plain("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2]),
         X8, {"AVERAGE_POOL_2D": 1}),
    Case("average_pool3x3_same", plain("AveragePool", ["x"], kernel_shape=[3, 3],
                                       pads=[1, 1, 1, 1]), X8, {"AVERAGE_POOL_2D": 1}),
    Case("average_pool_count_pad", plain("AveragePool", ["x"], kernel_shape=[3, 3],
                                         strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
         X8, {"AVERAGE_POOL_2D": 1, "PAD": 1}),
    Case("max_pool2x2", plain("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2]), X8,
         {"MAX_POOL_2D": 1}),
    Case("max_pool3x3_stride2_pad", plain("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                          pads=[1, 1, 1, 1]), {"x": (1, 8, 8, 8)},
         {"MAX_POOL_2D": 1, "PADV2": 1}),
    Case("max_pool3x3_stride2_ceil", plain("MaxPool", ["x"], kernel_shape=[3, 3],
                                           strides=[2, 2], ceil_mode=1), {"x": (1, 8, 8, 8)},
         {"MAX_POOL_2D": 1}),  # the overhang is TFLite's SAME
    Case("reshape_after_pool", lambda: (
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), node("Reshape", ["p", "shape"])],
        {"shape": np.array([1, -1], np.int64)}), X8, {"MEAN": 1, "RESHAPE": 1}),
    Case("flatten_spatial", plain("Flatten", ["x"]), X8, {"TRANSPOSE": 1, "RESHAPE": 1}),
    Case("concat_channels", plain("Concat", ["a", "b"], axis=1),
         {"a": (1, 4, 6, 6), "b": (1, 8, 6, 6)}, {"CONCATENATION": 1}, input_scale={"b": 2.0},
         qdq_ops={"CONCATENATION": 1, "QUANTIZE": 1}),  # a's scale differs from the output's
    Case("hardswish", plain("HardSwish", ["x"]), X8, {"HARD_SWISH": 1}, input_scale={"x": 3.0},
         qdq_ops={"MUL": 2, "ADD": 1}),  # int8: a chain XNNPACK runs (no int8 HARD_SWISH)
    Case("hardswish_narrow_input", plain("HardSwish", ["x"]), X8, {"HARD_SWISH": 1},
         input_scale={"x": 0.5}, qdq_ops={"MUL": 2, "ADD": 1}),  # x spans < 6: a finer gate
    Case("sigmoid", plain("Sigmoid", ["x"]), X8, {"LOGISTIC": 1}, input_scale={"x": 3.0},
         qdq_ops={"LOGISTIC": 1, "QUANTIZE": 1}),
    Case("tanh", plain("Tanh", ["x"]), X8, {"TANH": 1}, qdq_ops={"TANH": 1, "QUANTIZE": 1}),
    Case("softmax", plain("Softmax", ["x"]), {"x": (2, 10)}, {"SOFTMAX": 1},
         input_scale={"x": 2.0}, qdq_ops={"SOFTMAX": 1, "QUANTIZE": 1}),
    Case("softmax_channels", plain("Softmax", ["x"], axis=1), X8, {"SOFTMAX": 1},
         qdq_ops={"SOFTMAX": 1, "QUANTIZE": 1}),
    Case("softmax_rank4_last_axis", plain("Softmax", ["x"]), {"x": (1, 2, 6, 6)},
         {"SOFTMAX": 1, "TRANSPOSE": 2}, input_scale={"x": 2.0},
         qdq_ops={"SOFTMAX": 1, "TRANSPOSE": 2, "QUANTIZE": 1}),  # attention's scores
    Case("log_softmax", plain("LogSoftmax", ["x"]), {"x": (2, 10)}, {"LOG_SOFTMAX": 1},
         input_scale={"x": 2.0}, qdq="quantize_static has no QDQ rule for LogSoftmax; "
         "test_int8_correctness runs it in int8 from edgecnn's quantizer"),
    Case("squeeze_pooled", lambda: (
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), node("Squeeze", ["p", "axes"])],
        {"axes": np.array([2, 3], np.int64)}), X8, MEAN_KEEPDIMS),
    Case("unsqueeze_rows", plain("Unsqueeze", ["x", "axes"], {"axes": np.array([2], np.int64)}),
         {"x": (2, 10)}, {"RESHAPE": 1}),
    Case("pad_spatial_asymmetric", plain("Pad", ["x", "pads"],
                                         {"pads": np.array([0, 0, 1, 0, 0, 0, 2, 1], np.int64)}),
         X8, {"PAD": 1}),
    Case("pad_value_axes", plain("Pad", ["x", "pads", "value", "axes"],
                                 {"pads": np.array([1, 0, 1, 2], np.int64),
                                  "value": np.float32(0.5), "axes": np.array([2, 3], np.int64)}),
         X8, {"PADV2": 1}),
    Case("pad_then_conv_tf_same", lambda: (
        [helper.make_node("Pad", ["x", "pads"], ["p"]),
         node("Conv", ["p", "w", "b"], strides=[2, 2])],
        {"pads": np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "w": _w(8, 3, 3, 3),
         "b": _w(8)}), X, CONV),
    Case("leaky_relu", plain("LeakyRelu", ["x"], alpha=0.1), X8, {"LEAKY_RELU": 1}),
    Case("abs", plain("Abs", ["x"]), X8, {"ABS": 1}, quantized_ops=("Abs",)),
    Case("elu", plain("Elu", ["x"]), X8, {"ELU": 1}, input_scale={"x": 2.0},
         quantized_ops=("Elu",)),
    # max with 0 (torch's clamp(min=0)) is RELU; with another constant or an activation,
    # MAXIMUM / MINIMUM, int8 on one grid (quantize_static gives each tensor its own: the
    # inputs are requantized to the output's)
    Case("max_zero", plain("Max", ["x", "c"], {"c": np.float32(0)}), X8, {"RELU": 1},
         quantized_ops=("Max",)),
    Case("max_const_channels", plain("Max", ["x", "c"], {"c": _w(8, 1, 1)}), X8,
         {"MAXIMUM": 1}, quantized_ops=("Max",), qdq_ops={"MAXIMUM": 1, "QUANTIZE": 1}),
    Case("min_two_inputs", plain("Min", ["a", "b"]), {"a": (1, 8, 6, 6), "b": (1, 8, 6, 6)},
         {"MINIMUM": 1}, input_scale={"b": 2.0}, quantized_ops=("Min",),
         qdq_ops={"MINIMUM": 1, "QUANTIZE": 2}),
    # clip with bounds no activation has (torch's clamp(min=0.5), clamp(max=1), clamp(-2, 2)):
    # MAXIMUM / MINIMUM with the bounds on the output's grid; after an Add, which
    # quantize_static quantizes (it leaves a clip alone float), kept with its own output
    # parameters: the ADD writes them (align_same_scale retargets it), no QUANTIZE
    *(Case(f"clip_{name}", lambda lo=lo, hi=hi: (
        [helper.make_node("Add", ["a", "b"], ["s"]),
         node("Clip", ["s", "lo" if lo is not None else "", *(["hi"] if hi is not None else [])])],
        {**({"lo": np.float32(lo)} if lo is not None else {}),
         **({"hi": np.float32(hi)} if hi is not None else {})}),
           {"a": (1, 8, 6, 6), "b": (1, 8, 6, 6)}, {"ADD": 1, **ops}, input_scale={"b": 2.0},
           keep_activations=True)
      for name, lo, hi, ops in (("low", 0.5, None, {"MAXIMUM": 1}),
                                ("high", None, 1.0, {"MINIMUM": 1}),
                                ("both", -2.0, 2.0, {"MAXIMUM": 1, "MINIMUM": 1}))),
    Case("prelu_channels", plain("PRelu", ["x", "slope"], {"slope": _w(8, 1, 1)}), X8,
         {"PRELU": 1}),
    Case("hardsigmoid_torch", plain("HardSigmoid", ["x"], alpha=1 / 6, beta=0.5), X8,
         {"ADD": 1, "MUL": 1}, input_scale={"x": 4.0}),
    Case("hardsigmoid_onnx_default", plain("HardSigmoid", ["x"]), X8, {"MUL": 2, "ADD": 1},
         input_scale={"x": 4.0}),
    Case("div_const", plain("Div", ["x", "c"], {"c": np.float32(6.0)}), X8, {"MUL": 1}),
    Case("transpose_channels_last", plain("Transpose", ["x"], perm=[0, 2, 3, 1]), X8,
         {"TRANSPOSE": 1}),
    Case("transpose_unit_axis", plain("Transpose", ["x"], perm=[0, 2, 1]), {"x": (1, 1, 12)},
         {"RESHAPE": 1}),  # only a size-1 axis moves: the element order stays
    Case("slice_channels", plain("Slice", ["x", "starts", "ends", "axes"],
                                 {"starts": np.array([0], np.int64),
                                  "ends": np.array([4], np.int64),
                                  "axes": np.array([1], np.int64)}), X8, {"STRIDED_SLICE": 1}),
    Case("slice_chomp_strided", plain("Slice", ["x", "starts", "ends", "axes", "steps"],
                                      {"starts": np.array([1, 0], np.int64),
                                       "ends": np.array([-1, 100], np.int64),
                                       "axes": np.array([-1, 2], np.int64),
                                       "steps": np.array([1, 2], np.int64)}), X8,
         {"STRIDED_SLICE": 1}),
    # x[i] (torch's select) -> one STRIDED_SLICE (shrink_axis_mask drops the axis): a class
    # token, a channel of an NHWC tensor, attention's q of [3, N, heads, L, d] (rank 4 out:
    # a TRANSPOSE to NHWC), a row (NCHW order: a TRANSPOSE in), a one-element index
    Case("gather_class_token", plain("Gather", ["x", "i"], {"i": np.array(0, np.int64)},
                                     axis=1), {"x": (1, 6, 8)}, {"STRIDED_SLICE": 1},
         quantized_ops=("Gather",)),
    Case("gather_channel_negative", plain("Gather", ["x", "i"], {"i": np.array(-1, np.int64)},
                                          axis=1), X8, {"STRIDED_SLICE": 1},
         quantized_ops=("Gather",)),
    Case("gather_qkv", plain("Gather", ["x", "i"], {"i": np.array(1, np.int64)}),
         {"x": (3, 1, 2, 6, 4)}, {"STRIDED_SLICE": 1, "TRANSPOSE": 1},
         quantized_ops=("Gather",)),
    Case("gather_row", plain("Gather", ["x", "i"], {"i": np.array(2, np.int64)}, axis=2), X8,
         {"TRANSPOSE": 1, "STRIDED_SLICE": 1}, quantized_ops=("Gather",)),
    Case("gather_one_element", plain("Gather", ["x", "i"], {"i": np.array([3], np.int64)},
                                     axis=1), X8, {"STRIDED_SLICE": 1},
         quantized_ops=("Gather",)),
    # attention on [N, heads, L, d]: q, k, v from one [3, ...] tensor, (q @ k^T) @ v in NCHW
    # order (the TRANSPOSEs between merge: k's into one, the others cancel). Without the
    # softmax between (softmax_rank4_last_axis): its one step is many after the product
    Case("attention_rank4", lambda: (
        [*(helper.make_node("Gather", ["x", name], [name[0]], axis=0)
           for name in ("q0", "k1", "v2")),
         helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
         helper.make_node("MatMul", ["q", "kt"], ["s"]), node("MatMul", ["s", "v"])],
        {"q0": np.array(0, np.int64), "k1": np.array(1, np.int64),
         "v2": np.array(2, np.int64)}),
         {"x": (3, 1, 2, 6, 4)}, {"STRIDED_SLICE": 3, "TRANSPOSE": 2, "BATCH_MATMUL": 2},
         quantized_ops=("Gather",)),
    Case("split_channels_equal", lambda: ([helper.make_node("Split", ["x"], ["y", "rest"],
                                                            axis=1, num_outputs=2)], {}),
         X8, {"SPLIT": 1}),
    Case("split_channels_sizes", lambda: ([helper.make_node("Split", ["x", "sizes"],
                                                            ["rest", "y"], axis=1)],
                                          {"sizes": np.array([3, 5], np.int64)}),
         X8, {"SPLIT_V": 1}),
    Case("channel_shuffle", lambda: (
        [helper.make_node("Reshape", ["x", "grouped"], ["g"]),
         helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
         node("Reshape", ["t", "shape"])],
        {"grouped": np.array([1, 2, 4, 6, 6], np.int64),
         "shape": np.array([1, 8, 6, 6], np.int64)}), X8, {"RESHAPE": 2, "TRANSPOSE": 1}),
    # Conv1d: [N, C, L] as [N, C, 1, L]; a TRANSPOSE each way at the rank-3 edges
    Case("conv1d_dilated", plain("Conv", ["x", "w", "b"], {"w": _w(8, 4, 3), "b": _w(8)},
                                 dilations=[2], pads=[2, 2]), {"x": (1, 4, 16)},
         {"CONV_2D": 1, "RESHAPE": 2, "TRANSPOSE": 2}),
    Case("conv1d_causal_chomp", lambda: (
        [helper.make_node("Conv", ["x", "w"], ["c"], dilations=[2], pads=[4, 4], group=4),
         helper.make_node("Relu", ["c"], ["r"]),
         node("Slice", ["r", "starts", "ends", "axes"])],
        {"w": _w(4, 1, 3), "starts": np.array([0], np.int64),
         "ends": np.array([-4], np.int64), "axes": np.array([2], np.int64)}),
         {"x": (1, 4, 16)}, {"DEPTHWISE_CONV_2D": 1, "PAD": 1, "STRIDED_SLICE": 1,
                             "RESHAPE": 2, "TRANSPOSE": 2}),
    Case("conv_transpose_2x2_stride2", plain("ConvTranspose", ["x", "w", "b"],
                                             {"w": _w(8, 4, 2, 2), "b": _w(4)},
                                             strides=[2, 2]), X8, {"TRANSPOSE_CONV": 1}),
    Case("conv_transpose_3x3_same", plain("ConvTranspose", ["x", "w"], {"w": _w(8, 6, 3, 3)},
                                          strides=[2, 2], pads=[0, 0, 1, 1]),
         X8, {"TRANSPOSE_CONV": 1}),
    Case("conv_transpose_3x3_output_padding", plain(
        "ConvTranspose", ["x", "w", "b"], {"w": _w(8, 4, 3, 3), "b": _w(4)}, strides=[2, 2],
        pads=[1, 1, 1, 1], output_padding=[1, 1]), X8,
         {"TRANSPOSE_CONV": 1, "STRIDED_SLICE": 1}),
    Case("conv_transpose_relu_fused", lambda: (
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], strides=[2, 2]),
         node("Relu", ["c"])], {"w": _w(8, 4, 2, 2), "b": _w(4)}), X8, {"TRANSPOSE_CONV": 1}),
    Case("batch_norm", plain("BatchNormalization", ["x", "s", "b", "m", "v"],
                             {"s": _w(8), "b": _w(8), "m": _w(8),
                              "v": np.abs(_w(8)) + 0.5}), X8, {"DEPTHWISE_CONV_2D": 1}),
    Case("resize_nearest_2x", plain("Resize", ["x", "", "scales"],
                                    {"scales": np.array([1, 1, 2, 2], np.float32)},
                                    mode="nearest", coordinate_transformation_mode="asymmetric",
                                    nearest_mode="floor"), X8, {"RESIZE_NEAREST_NEIGHBOR": 1}),
    Case("resize_bilinear_half_pixel", plain("Resize", ["x", "", "scales"],
                                             {"scales": np.array([1, 1, 2, 2], np.float32)},
                                             mode="linear"), X8, {"RESIZE_BILINEAR": 1}),
    Case("resize_bilinear_align_corners", plain("Resize", ["x", "", "", "sizes"],
                                                {"sizes": np.array([1, 8, 11, 9], np.int64)},
                                                mode="linear",
                                                coordinate_transformation_mode="align_corners"),
         X8, {"RESIZE_BILINEAR": 1}),
    Case("gelu_erf_chain", lambda: (
        [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
         helper.make_node("Add", ["e", "one"], ["a"]),
         helper.make_node("Mul", ["half", "a"], ["m"]), node("Mul", ["x", "m"])],
        {"sqrt2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}),
         X8, {"GELU": 1}, input_scale={"x": 2.0},
         qdq="quantize_static quantizes each op of the chain separately; edgecnn's quantizer "
             "quantizes torch's gelu as one op (test_blocks)"),
    Case("gelu_tanh", plain("Gelu", ["x"], approximate="tanh"), X8, {"GELU": 1},
         input_scale={"x": 2.0}, qdq="quantize_static has no QDQ rule for Gelu", opset=20),
    # float islands: no int8 kernel (SQRT, DIV), so the QDQ model's DQ / Q become
    # DEQUANTIZE / QUANTIZE around the float chain
    Case("layer_norm_channels_last", lambda: (
        [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
         helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], axis=-1, epsilon=1e-6),
         node("Transpose", ["n"], perm=[0, 3, 1, 2])],
        {"g": _w(8) + 1, "b": _w(8)}), X8, NORM_OPS,
         qdq_ops={**NORM_OPS, "DEQUANTIZE": 1, "QUANTIZE": 1}),
    Case("layer_norm_chw", plain("LayerNormalization", ["x", "g", "b"],
                                 {"g": _w(8, 6, 6) + 1, "b": _w(8, 6, 6)}, axis=1), X8,
         NORM_OPS, qdq=NORM_ALONE),
    Case("instance_norm", plain("InstanceNormalization", ["x", "g", "b"],
                                {"g": _w(8) + 1, "b": _w(8)}), X8, NORM_OPS, qdq=NORM_ALONE),
    Case("group_norm_one_group", lambda: (  # GroupNorm(1, C) as torch.onnx writes it
        [helper.make_node("Reshape", ["x", "flat"], ["f"]),
         helper.make_node("InstanceNormalization", ["f", "g", "b"], ["n"]),
         node("Reshape", ["n", "back"])],
        {"flat": np.array([1, 1, -1], np.int64), "back": np.array([1, 8, 6, 6], np.int64),
         "g": np.float32([1.5]), "b": np.float32([0.2])}), X8, NORM_OPS,
         qdq_ops={**NORM_OPS, "DEQUANTIZE": 1, "QUANTIZE": 1}),
    # GroupNorm(4, 8) as torch.onnx writes it, its affine after: one GroupNormalization,
    # RESHAPE to [N, H*W, G, C/G] and back (NHWC, no TRANSPOSE), the chain over axes 1, 3
    Case("group_norm_groups", lambda: (
        [helper.make_node("Reshape", ["x", "flat"], ["f"]),
         helper.make_node("InstanceNormalization", ["f", "g", "b"], ["n"]),
         helper.make_node("Reshape", ["n", "back"], ["r"]),
         helper.make_node("Mul", ["r", "w"], ["m"]), node("Add", ["m", "c"])],
        {"flat": np.array([1, 4, -1], np.int64), "back": np.array([1, 8, 6, 6], np.int64),
         "g": np.ones(4, np.float32), "b": np.zeros(4, np.float32), "w": _w(8, 1, 1) + 1,
         "c": _w(8, 1, 1)}), X8, GROUP_NORM_OPS,
         qdq_ops={**GROUP_NORM_OPS, "DEQUANTIZE": 1, "QUANTIZE": 1}),
    Case("group_norm_onnx", plain("GroupNormalization", ["x", "g", "b"],
                                  {"g": _w(8) + 1, "b": _w(8)}, num_groups=2),
         X8, GROUP_NORM_OPS, qdq=NORM_ALONE, opset=21, output_shape=X8["x"]),
    Case("group_norm_per_channel", plain("GroupNormalization", ["x", "g", "b"],  # G = C:
                                         {"g": _w(8) + 1, "b": _w(8)}, num_groups=8),
         X8, NORM_OPS, qdq=NORM_ALONE, opset=21, output_shape=X8["x"]),  # over H, W alone
    Case("group_norm_sequence", plain("GroupNormalization", ["x", "g", "b"],  # [N, C, L]
                                      {"g": _w(8) + 1, "b": _w(8)}, num_groups=4),
         {"x": (1, 8, 12)}, GROUP_NORM_OPS, qdq=NORM_ALONE, opset=21, output_shape=(1, 8, 12)),
    Case("sqrt_of_square", lambda: (
        [helper.make_node("Mul", ["x", "x"], ["s"]), node("Sqrt", ["s"])], {}), X8,
         {"MUL": 1, "SQRT": 1}, qdq="quantize_static quantizes no Sqrt: the QDQ model's "
         "output is float; test_quant_spec and test_blocks cover torch's float islands"),
    Case("div_by_activation", lambda: (  # a divisor in [1, 3]: x / (d + 2)
        [helper.make_node("Add", ["d", "two"], ["s"]), node("Div", ["x", "s"])],
        {"two": np.float32(2)}), {"x": (1, 8, 6, 6), "d": (1, 8, 6, 6)}, {"ADD": 1, "DIV": 1},
         input_scale={"d": 0.3}, qdq_ops={"ADD": 1, "DEQUANTIZE": 2, "DIV": 1, "QUANTIZE": 1}),
    # int8 kernels (op_version.cc: version 2): EXP a lookup table, RSQRT fixed point
    Case("exp", plain("Exp", ["x"]), X8, {"EXP": 1}),
    # (x > 0 drawn as the input itself: an int8 tensor between would carry its own rounding
    # into sqrt's steep start, many output steps)
    Case("rsqrt", lambda: (  # torch's rsqrt: Sqrt -> Reciprocal
        [helper.make_node("Sqrt", ["x"], ["r"]), node("Reciprocal", ["r"])], {}), X8,
         {"RSQRT": 1}, input_scale={"x": 0.5}, input_mean={"x": 2.0}, quantized_ops=("Sqrt",),
         float_tensors=("r",)),
    Case("reciprocal", lambda: (  # 1 / (d + 2), d in about [-1, 1]
        [helper.make_node("Add", ["d", "two"], ["s"]), node("Reciprocal", ["s"])],
        {"two": np.float32(2)}), {"d": (1, 8, 6, 6)}, {"ADD": 1, "DIV": 1},
         input_scale={"d": 0.3}, qdq_ops={"ADD": 1, "DEQUANTIZE": 1, "DIV": 1, "QUANTIZE": 1}),
    # Pow: x^2 is MUL(x, x) (int8), x^0.5 SQRT, any other exponent POW (float island)
    Case("pow_square", plain("Pow", ["x", "e"], {"e": np.float32(2)}), X8, {"MUL": 1}),
    Case("pow_half", plain("Pow", ["x", "e"], {"e": np.float32(0.5)}), X8, {"SQRT": 1},
         input_scale={"x": 0.5}, input_mean={"x": 2.0},
         qdq_ops={"DEQUANTIZE": 1, "SQRT": 1, "QUANTIZE": 1}),
    Case("pow_cube", plain("Pow", ["x", "e"], {"e": np.float32(3)}), X8, {"POW": 1},
         qdq_ops={"DEQUANTIZE": 1, "POW": 1, "QUANTIZE": 1}),
    Case("relu", plain("Relu", ["x"]), X8, {"RELU": 1}, qdq=NO_STANDALONE_ACTIVATION),
    Case("clip_0_6", plain("Clip", ["x", "lo", "hi"], {"lo": np.float32(0), "hi": np.float32(6)}),
         X8, {"RELU6": 1}, input_scale={"x": 4.0}, qdq=NO_STANDALONE_ACTIVATION),
]
IDS = [case.id for case in CASES]


def nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def run_litert(data: bytes, feeds: dict[str, np.ndarray], delegate: bool):
    """Run on LiteRT with float feeds (quantized when the input is int8); returns the raw
    output in NCHW and its (scale, zero point)."""
    it = interpreter(data, delegate=delegate)
    for detail, value in zip(it.get_input_details(), feeds.values(), strict=True):
        it.set_tensor(detail["index"], quantize_input(detail, nhwc(value)))
    it.invoke()
    out = it.get_output_details()[0]
    return nchw(it.get_tensor(out["index"])), out["quantization"]


class Reader(CalibrationDataReader):
    def __init__(self, case: Case, count: int = 8) -> None:
        self.batches = iter([case.feeds(seed) for seed in range(100, 100 + count)])

    def get_next(self):
        return next(self.batches, None)


# quantize_static's default op list plus ops it leaves float unless asked.
QDQ_OPS = ["Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Relu", "Clip", "Sigmoid", "Tanh",
           "HardSwish", "Softmax", "GlobalAveragePool", "ReduceMean", "AveragePool", "MaxPool",
           "Reshape", "Flatten", "Concat", "Pad", "Squeeze", "Unsqueeze", "LeakyRelu", "PRelu",
           "HardSigmoid", "Div", "Transpose", "Slice", "BatchNormalization", "Resize", "Split",
           "ConvTranspose", "Exp", "Reciprocal", "Pow"]


_QUANTIZED: dict[str, bytes] = {}


def quantize(case: Case) -> onnx.ModelProto:
    """The case's QDQ model, made by quantize_static once per test run (it is seconds per
    case and the same in every module); a fresh copy each call."""
    if case.id not in _QUANTIZED:
        with tempfile.TemporaryDirectory(prefix="edgecnn-qdq-") as tmp:
            out = Path(tmp) / f"{case.id}_qdq.onnx"
            quantize_static(case.model(), out, Reader(case), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            op_types_to_quantize=QDQ_OPS + list(case.quantized_ops),
                            extra_options={"ForceQuantizeNoInputCheck": True,
                                           "QDQKeepRemovableActivations":
                                               case.keep_activations})
            model = onnx.load(out)
            for tensor in case.float_tensors:
                _drop_qdq(model, tensor)
            _QUANTIZED[case.id] = model.SerializeToString()
    return onnx.load_from_string(_QUANTIZED[case.id])


def _drop_qdq(model: onnx.ModelProto, tensor: str) -> None:
    """Remove the QuantizeLinear -> DequantizeLinear pair on `tensor`: its readers read it."""
    nodes = model.graph.node
    quantize = next(n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    dequantize = next(n for n in nodes if n.op_type == "DequantizeLinear"
                      and n.input[0] == quantize.output[0])
    for node in nodes:
        node.input[:] = [tensor if i == dequantize.output[0] else i for i in node.input]
    nodes.remove(quantize)
    nodes.remove(dequantize)


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]


