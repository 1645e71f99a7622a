"""One record per TFLite builtin the converter writes: what edgecnn knows about it, in one place.

A record holds the builtin's options table in the schema, the lowest version
per input dtype and the rules that raise it (tensorflow/lite/tools/versioning/
op_version.cc: a runtime refuses a version it does not register), and its int8
contract (tensorflow/lite/kernels/*.cc Prepare checks, and
https://ai.google.dev/edge/litert/models/quantization_spec):

- "requantize": the kernel rescales, the output has parameters of its own;
- "same": the kernel copies int8 values, input(s) and output share parameters;
- "fixed": the output has one fixed (scale, zero point), `fixed_output`;
- "convert": QUANTIZE / DEQUANTIZE themselves;
- "float": no int8 kernel (SQRT: float32 only, elementwise.cc; DIV: float32, int32 and
  uint8, div.cc; POW: float32 and int32, pow.cc): the op runs in float between a
  DEQUANTIZE and a QUANTIZE (a float island, `passes.islands`), and the quantizer leaves
  the aten ops that become it float (`quant.annotators.FLOAT_OPS`).

`weights` names the constant weights input and its per-channel axis (the int32
bias, input `bias_input`, has scale input x weight scale); `fuses_activation` says a
RELU / RELU6 / RELU_N1_TO_1 can become its fused_activation_function, and
`fusable` that this builtin is such an activation. `data_input` is the input whose dtype
picks the version and whose parameters a "same" output shares (SPLIT's comes after the
axis).

16x8 (`--int16`, `edgecnn.quant.precision`): an "int16" version is TFLite's int16-activation
kernel (int16 activations with zero point 0, int8 weights, int64 bias; the version from
op_version.cc), declared only where LiteRT and tflite-runtime 2.14 both run it and agree
with onnxruntime's QDQ within one int16 step (measured, tests/test_precision.py: one row
per builtin); `fixed_output16` is the fixed int16 output the kernel checks (LOGISTIC, TANH,
SOFTMAX: 1/32768, 0; activations.cc); `int16_options` are the options its int16 file needs
(ADD / SUB: pot_scale_int16 false, the general-scale kernel op_version.cc versions; add.cc,
sub.cc); `int16_unwritten` says why a 16x8 kernel that exists is not written (GELU: LiteRT
has one, tflite-runtime 2.14 refuses int16, "Only float32, int8 and uint8 supported";
TANH / SOFTMAX: both runtimes run one, 2 int16 steps from onnxruntime's QDQ, measured). Any
other builtin on int16 data is refused by `op_version`, naming the node, with that list.

`rounding` is how the builtin int8 kernel breaks ties in its final rounding right shift
(measured: `builtin_int8`). The passes, the writer and the quantizer read these records;
a new builtin is one `builtin(...)` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgecnn.errors import EdgecnnError
from edgecnn.export.tflite.graph import Graph, Op
from edgecnn.registry import Registry

F32, I8, I16 = "float32", "int8", "int16"
INT8_CONTRACTS = ("requantize", "same", "fixed", "convert", "float")

VersionRule = tuple[Callable[[Graph, Op], bool], int]


@dataclass(frozen=True)
class Builtin:
    """What the converter knows about one TFLite builtin operator (see the module doc)."""

    name: str
    options: str
    versions: dict[str, int]
    int8: str = "requantize"
    version_rules: tuple[VersionRule, ...] = ()
    fixed_output: tuple[float, int] | None = None
    weights: tuple[int, int] | None = None
    fuses_activation: bool = False
    fusable: bool = False
    data_input: int = 0
    bias_input: int = 2
    rounding: str | None = None
    fixed_output16: tuple[float, int] | None = None
    int16_options: tuple[tuple[str, object], ...] = ()
    int16_unwritten: str = ""

    def __post_init__(self) -> None:
        if self.int8 not in INT8_CONTRACTS:
            raise ValueError(f"{self.name}: int8 contract {self.int8!r} not in {INT8_CONTRACTS}")
        if (self.int8 == "fixed") != (self.fixed_output is not None):
            raise ValueError(f"{self.name}: a fixed int8 contract needs fixed_output, and only it")
        if self.fixed_output16 is not None and I16 not in self.versions:
            raise ValueError(f"{self.name}: a fixed int16 output needs an int16 version")


BUILTINS: Registry[Builtin] = Registry("TFLite builtin")


def builtin(name: str, options: str = "", versions: dict[str, int] | None = None,
            **contract) -> Builtin:
    """Register the record of builtin `name` (versions default: float32 1, int8 2)."""
    return BUILTINS.add(name, Builtin(name, options, versions or {F32: 1, I8: 2}, **contract))


def _dilated(graph: Graph, op: Op) -> bool:
    return op.attrs.get("dilation_h_factor", 1) != 1 or op.attrs.get("dilation_w_factor", 1) != 1


def _grouped(graph: Graph, op: Op) -> bool:
    """A CONV_2D whose filter has fewer input channels than its input (op_version.cc: 6)."""
    return graph.tensor(op.inputs[1]).shape[3] != graph.tensor(op.inputs[0]).shape[3]


def _half_pixel(graph: Graph, op: Op) -> bool:
    return bool(op.attrs.get("half_pixel_centers"))


def _rank_above(rank: int) -> Callable[[Graph, Op], bool]:
    def condition(graph: Graph, op: Op) -> bool:
        return graph.tensor(op.inputs[0]).rank > rank
    return condition


def _transpose_conv_bias(graph: Graph, op: Op) -> bool:
    """A TRANSPOSE_CONV with its optional bias input 3 (op_version.cc: 3)."""
    return len(op.inputs) > 3 and bool(op.inputs[3])


def _fused_activation(graph: Graph, op: Op) -> bool:
    return op.attrs.get("fused_activation_function", "NONE") != "NONE"


def _keeps_dims(graph: Graph, op: Op) -> bool:
    return bool(op.attrs.get("keep_num_dims"))


def _int16_output(graph: Graph, op: Op) -> bool:
    """QUANTIZE writing int16 (op_version.cc: 2)."""
    return str(graph.tensor(op.outputs[0]).dtype) == I16


def _mul_rescale_ge_1(graph: Graph, op: Op) -> bool:
    a, b, y = (graph.tensor(n).quant for n in (*op.inputs[:2], op.outputs[0]))
    return None not in (a, b, y) and a.scale[0] * b.scale[0] / y.scale[0] >= 1.0


# -- weighted ops -----------------------------------------------------------------------------
builtin("CONV_2D", "Conv2DOptions", {F32: 1, I8: 3, I16: 4}, version_rules=((_grouped, 6),),
        weights=(1, 0), fuses_activation=True, rounding="up")
builtin("DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions", {F32: 1, I8: 3, I16: 5},
        version_rules=((_dilated, 2),), weights=(1, 3), fuses_activation=True, rounding="up")
builtin("FULLY_CONNECTED", "FullyConnectedOptions", {F32: 1, I8: 4, I16: 7},
        version_rules=((_keeps_dims, 5),), weights=(1, 0), fuses_activation=True,
        rounding="up")
builtin("TRANSPOSE_CONV", "TransposeConvOptions",
        version_rules=((_transpose_conv_bias, 3), (_fused_activation, 4)),
        weights=(1, 0), data_input=2, bias_input=3, fuses_activation=True)
builtin("BATCH_MATMUL", "BatchMatMulOptions")
# -- elementwise and reductions ---------------------------------------------------------------
builtin("ADD", "AddOptions", {F32: 1, I8: 2, I16: 3}, fuses_activation=True, rounding="away",
        int16_options=(("pot_scale_int16", False),))
builtin("SUB", "SubOptions", {F32: 1, I8: 2, I16: 5}, fuses_activation=True,
        int16_options=(("pot_scale_int16", False),))
builtin("MUL", "MulOptions", {F32: 1, I8: 2, I16: 4}, version_rules=((_mul_rescale_ge_1, 3),),
        fuses_activation=True)
builtin("MEAN", "ReducerOptions", {F32: 1, I8: 2, I16: 3}, rounding="away")
# int8 ABS rescales to its own output parameters (elementwise.cc AbsPrepare; op_version.cc 2)
builtin("ABS")
# -- no int8 kernel: float islands (a normalization's decomposition, division by a tensor) ----
builtin("SQRT", versions={F32: 1}, int8="float")
builtin("DIV", "DivOptions", versions={F32: 1}, int8="float", fuses_activation=True)
builtin("POW", versions={F32: 1}, int8="float")  # pow.cc: float32 and int32
# -- transcendental with an int8 kernel (op_version.cc: int8 version 2), own output scale:
# EXP a lookup table (exp.cc), RSQRT a fixed-point inverse square root (elementwise.cc,
# which refuses an input below its zero point: the quantizer's ranges include 0)
builtin("EXP")
builtin("RSQRT")
# -- data movement: one scale in and out ------------------------------------------------------
builtin("AVERAGE_POOL_2D", "Pool2DOptions", {F32: 1, I8: 2, I16: 3}, int8="same",
        fuses_activation=True)
builtin("MAX_POOL_2D", "Pool2DOptions", {F32: 1, I8: 2, I16: 3}, int8="same",
        fuses_activation=True)
builtin("PAD", "PadOptions", {F32: 1, I8: 2, I16: 3}, int8="same")
builtin("PADV2", "PadV2Options", {F32: 1, I8: 2, I16: 3}, int8="same")
builtin("RESHAPE", "ReshapeOptions", {F32: 1, I8: 1, I16: 1}, int8="same")
builtin("TRANSPOSE", "TransposeOptions", {F32: 1, I8: 2, I16: 5}, int8="same",
        version_rules=((_rank_above(4), 4), (_rank_above(5), 6)))
builtin("STRIDED_SLICE", "StridedSliceOptions", {F32: 1, I8: 2, I16: 1}, int8="same")
builtin("RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions", {F32: 1, I8: 2, I16: 4},
        int8="same",
        version_rules=((_half_pixel, 3),))
builtin("RESIZE_BILINEAR", "ResizeBilinearOptions", {F32: 1, I8: 2, I16: 4}, int8="same",
        version_rules=((_half_pixel, 3),))
builtin("CONCATENATION", "ConcatenationOptions", {F32: 1, I8: 2, I16: 3}, int8="same")
builtin("SPLIT", "SplitOptions", {F32: 1, I8: 2, I16: 4}, int8="same", data_input=1)
builtin("SPLIT_V", "SplitVOptions", int8="same")
# compare int8 values and copy the winner: input(s) and output on one grid (reduce.cc,
# maximum_minimum.cc; op_version.cc: int8 version 2)
builtin("REDUCE_MAX", "ReducerOptions", int8="same")
builtin("MAXIMUM", "MaximumMinimumOptions", int8="same")
builtin("MINIMUM", "MaximumMinimumOptions", int8="same")
# -- activations ------------------------------------------------------------------------------
builtin("LOGISTIC", versions={F32: 1, I8: 2, I16: 3}, int8="fixed", fixed_output=(1 / 256, -128),
        fixed_output16=(1 / 32768, 0))
builtin("TANH", int8="fixed", fixed_output=(1 / 128, 0),
        int16_unwritten="on both runtimes, 2 int16 steps from onnxruntime's QDQ")
builtin("SOFTMAX", "SoftmaxOptions", int8="fixed", fixed_output=(1 / 256, -128),
        int16_unwritten="on both runtimes, 2 int16 steps from onnxruntime's QDQ")
builtin("LOG_SOFTMAX", "LogSoftmaxOptions", int8="fixed", fixed_output=(16 / 256, 127))
builtin("HARD_SWISH", "HardSwishOptions", {F32: 1, I8: 1})
builtin("LEAKY_RELU", "LeakyReluOptions", {F32: 1, I8: 2, I16: 2})
builtin("GELU", "GeluOptions",
        int16_unwritten="on LiteRT only, not on tflite-runtime 2.14")
builtin("PRELU", versions={F32: 1, I8: 1})
builtin("ELU", versions={F32: 1, I8: 1})  # int8: a lookup table, own output (activations.cc)
builtin("RELU", versions={F32: 1, I8: 2, I16: 3}, fusable=True)
builtin("RELU6", versions={F32: 1, I8: 2, I16: 3}, fusable=True)
builtin("RELU_N1_TO_1", versions={F32: 1, I8: 1}, fusable=True)
# -- conversions ------------------------------------------------------------------------------
builtin("QUANTIZE", "QuantizeOptions", {F32: 1, I8: 1, "uint8": 1, I16: 1}, int8="convert",
        version_rules=((_int16_output, 2),))
builtin("DEQUANTIZE", "DequantizeOptions", {I8: 2, I16: 3}, int8="convert")


def record(op: Op) -> Builtin | None:
    """The record of a lowered op's builtin, None for a name without one."""
    return BUILTINS.get(op.type) if op.type in BUILTINS else None


def fixed_outputs() -> dict[str, tuple[float, int]]:
    """builtin -> its fixed int8 output (scale, zero point), for the builtins that have one."""
    return {name: BUILTINS.get(name).fixed_output for name in BUILTINS
            if BUILTINS.get(name).fixed_output is not None}


def int16_builtins() -> list[str]:
    """The builtins with a 16x8 (int16 activation) version: LiteRT and tflite-runtime 2.14
    both run them (see the module doc)."""
    return sorted(name for name in BUILTINS if I16 in BUILTINS.get(name).versions
                  and BUILTINS.get(name).int8 != "convert")


def int16_kernels_text() -> str:
    """One clause for error messages: the builtins edgecnn writes with 16x8 kernels (both
    runtimes), and the 16x8 kernels it does not write, with why (`int16_unwritten`)."""
    unwritten = [f"{name} ({BUILTINS.get(name).int16_unwritten})" for name in BUILTINS
                 if BUILTINS.get(name).int16_unwritten]
    return (f"builtins with 16x8 kernels on LiteRT and tflite-runtime 2.14: "
            f"{', '.join(int16_builtins())}"
            + (f"; 16x8 kernels not written: {', '.join(sorted(unwritten))}"
               if unwritten else ""))


def fixed_output(op: Op, dtype: str) -> tuple[float, int] | None:
    """The fixed (scale, zero point) `op`'s kernel writes for `dtype` outputs, if any."""
    rec = record(op)
    if rec is None:
        return None
    return rec.fixed_output16 if dtype == I16 else rec.fixed_output


def op_version(graph: Graph, op: Op) -> int:
    """The version of `op`'s operator code: the record's version for the dtype of its data input,
    raised by the record's rules that hold."""
    rec = record(op)
    dtype = str(graph.tensor(op.inputs[rec.data_input if rec else 0]).dtype)
    if rec is None or dtype not in rec.versions:
        known = ", ".join(sorted(rec.versions)) if rec else "none"
        extra = f"; {int16_kernels_text()}" if dtype == I16 else ""
        raise EdgecnnError(f"{op.describe()}: no TFLite {op.type} kernel for {dtype} inputs "
                           f"(dtypes with a version: {known}){extra}")
    version = rec.versions[dtype]
    for condition, rule_version in rec.version_rules:
        if condition(graph, op):
            version = max(version, rule_version)
    return version
