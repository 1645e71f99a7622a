"""Elementwise ops: binary arithmetic and activations."""

from __future__ import annotations

import math

import numpy as np

from edgecnn.export.tflite.builtins import int16_kernels_text
from edgecnn.export.tflite.graph import Quant
from edgecnn.export.tflite.layouts import elementwise_layout, softmax_layout
from edgecnn.export.tflite.ops.base import Lowering, register
from edgecnn.qmath import hardswish_gate_steps


def _binary(ctx: Lowering, builtin: str) -> None:
    ctx.emit(builtin, [ctx.operand(0), ctx.operand(1)], [ctx.output().name],
             fused_activation_function="NONE")


@register("Add", layout=elementwise_layout)
def lower_add(ctx: Lowering) -> None:
    """A + B with numpy broadcasting -> ADD. int8: inputs and output may differ in scale."""
    _binary(ctx, "ADD")


@register("Sub", layout=elementwise_layout)
def lower_sub(ctx: Lowering) -> None:
    """A - B with numpy broadcasting -> SUB. int8: inputs and output may differ in scale."""
    _binary(ctx, "SUB")


@register("Mul", layout=elementwise_layout)
def lower_mul(ctx: Lowering) -> None:
    """A * B with numpy broadcasting (squeeze-excite scales [N,1,1,C]) -> MUL."""
    _binary(ctx, "MUL")


def _unary(ctx: Lowering, builtin: str, **options) -> None:
    ctx.emit(builtin, [ctx.input(0).name], [ctx.output().name], **options)


@register("Relu", propagates="forward")
def lower_relu(ctx: Lowering) -> None:
    """max(x, 0) -> RELU; the `fuse_activations` pass folds it into its producer when exact."""
    _unary(ctx, "RELU")


def _max_min(ctx: Lowering, builtin: str) -> None:
    if len(ctx.op.inputs) != 2:
        raise ctx.fail(f"{len(ctx.op.inputs)} inputs; supported: 2")
    for index in (0, 1):
        other = ctx.input(1 - index)
        values = _values(other) if other.is_const else None
        if builtin == "MAXIMUM" and values is not None and not np.any(values) \
                and ctx.output().shape == ctx.input(index).shape:
            ctx.emit("RELU", [ctx.input(index).name], [ctx.output().name])
            return
    ctx.emit(builtin, [ctx.operand(0), ctx.operand(1)], [ctx.output().name])


@register("Max", layout=elementwise_layout)
def lower_max(ctx: Lowering) -> None:
    """Elementwise max of two inputs (numpy broadcasting): with a constant 0 (torch's
    clamp(min=0), maximum(x, zeros_like(x))) -> RELU, which a producer may fuse; else
    MAXIMUM. int8: MAXIMUM copies the larger value, so its inputs and output share
    parameters (`align_same_scale` puts a constant on that grid)."""
    _max_min(ctx, "MAXIMUM")


@register("Min", layout=elementwise_layout)
def lower_min(ctx: Lowering) -> None:
    """Elementwise min of two inputs (numpy broadcasting) -> MINIMUM; int8 as MAXIMUM."""
    _max_min(ctx, "MINIMUM")


# (min, max) -> builtin; None is an open bound.
CLIP_BUILTINS = {(0.0, 6.0): "RELU6", (0.0, None): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}


def clip_builtins(low: float | None, high: float | None) -> list[str]:
    """The builtins clip(x, low, high) lowers to (None: an open bound): the activation of
    `CLIP_BUILTINS`, else MAXIMUM with the low bound then MINIMUM with the high one (the
    quantizer's `annotate_clamp` reads their int8 contract)."""
    if (low, high) in CLIP_BUILTINS:
        return [CLIP_BUILTINS[low, high]]
    return [name for name, bound in (("MAXIMUM", low), ("MINIMUM", high)) if bound is not None]


@register("Clip", propagates="forward")
def lower_clip(ctx: Lowering, *, min: float | None = None, max: float | None = None) -> None:
    """clip(x, min, max) for (0, 6), (0, inf) and (-1, 1) -> RELU6, RELU, RELU_N1_TO_1; for
    other bounds (torch's clamp(min=0.5), clamp(-2, 2)) MAXIMUM and / or MINIMUM with a
    constant (`clip_builtins`). int8: MAXIMUM / MINIMUM copy the winner, the bound quantized
    on the output's grid (`align_same_scale`), so a clip whose input and output share
    parameters (edgecnn's quantizer) rounds nothing: exact.

    Bounds come from constant inputs (opset >= 11) or attributes. Raises EdgecnnError naming
    the node for a bound that is not a scalar constant, or no bound.
    """
    bounds = []
    for index, attr in ((1, min), (2, max)):
        tensor = ctx.input(index)
        if tensor is not None and (not tensor.is_const or tensor.data.size != 1):
            raise ctx.fail("clip bounds must be scalar constants")
        value = float(tensor.data.reshape(-1)[0]) if tensor is not None else attr
        bounds.append(None if value is None or math.isinf(value) else value)
    builtins = clip_builtins(*bounds)
    if not builtins:
        raise ctx.fail("a clip without bounds is not supported")
    if builtins[0] in CLIP_BUILTINS.values():
        _unary(ctx, builtins[0])
        return
    y, x = ctx.output(), ctx.input(0).name
    for i, (builtin, bound) in enumerate(zip(builtins, [b for b in bounds if b is not None],
                                             strict=True)):
        out = y.name if i == len(builtins) - 1 else ctx.like("clip_low", y, y.shape)
        const = ctx.graph.add_const(f"{ctx.op.name}_{builtin.lower()}", np.float32(bound))
        ctx.emit(builtin, [x, const], [out])
        x = out


@register("Sigmoid")
def lower_sigmoid(ctx: Lowering) -> None:
    """1 / (1 + exp(-x)) -> LOGISTIC. int8 output is (1/256, -128) (`fix_output_quant`)."""
    _unary(ctx, "LOGISTIC")


@register("Tanh")
def lower_tanh(ctx: Lowering) -> None:
    """tanh(x) -> TANH. int8 output is (1/128, 0) (`fix_output_quant`)."""
    _unary(ctx, "TANH")


#: the hard-sigmoid tensor inside an int8 hard-swish when x spans 6 or more: [0, 1] on the
#: int8 grid, so that saturation is the clip (scale 1/255, zero point -128)
UNIT_INTERVAL = Quant(1 / 255, -128)


def _gate_quant(x: Quant) -> Quant:
    """The int8 parameters of h = clip(x / 6 + 1/2, 0, 1) for x quantized with `x` when x's
    scale is not 3 / n: the grid [0, min(1, hi)] (zero must be on it), hi = h at x's
    largest value, so that saturation at its ends is the clip and its step is at most
    1/255."""
    scale, zero = float(x.scale[0]), int(x.zero_point[0])
    high = min(1.0, scale * (127 - zero) / 6 + 0.5)
    return Quant(high / 255, -128) if 0.0 < high < 1.0 else UNIT_INTERVAL  # <= 0: h is 0


@register("HardSwish")
def lower_hardswish(ctx: Lowering) -> None:
    """x * relu6(x + 3) / 6 -> HARD_SWISH (float); int8: MUL by 1/6 -> ADD 1/2 -> MUL by x.

    XNNPACK (LiteRT's delegate) has no int8 HARD_SWISH kernel (its TFLite delegate
    checks for float32 tensors), so an int8 HARD_SWISH runs outside the delegate and
    splits its partition: the int8 MobileNetV3 ran slower than the float one. The chain
    runs inside it: x / 6 takes x's zero point and scale / 6 (an exact integer identity),
    the ADD writes the gate h = clip(x / 6 + 1/2, 0, 1), and the last MUL writes x * h
    with the output's parameters.

    When x's scale is 3 / n (n <= 127: edgecnn's quantizer makes it so,
    `qmath.hardswish_input_scale`), h is exact: its grid is (scale / 6, 127 - 2n), the
    1/2 is n of its steps, the ADD's fused RELU is the clip at 0 and int8 saturation the
    clip at 1; the product then rounds once, as onnxruntime's QDQ HardSwish (float
    between a DequantizeLinear and a QuantizeLinear) does. On another scale (a QDQ model
    from another quantizer), h is rounded to `_gate_quant`'s grid: at most
    |x| x step / 2 <= 3 / 510 more error for |x| < 3, which moved 9% of a trained
    MobileNetV3 block's logits by more than one step against onnxruntime
    (`benchmarks/hardswish.md`).
    """
    x, y = ctx.input(0), ctx.output()
    if x.quant is None or y.quant is None:
        _unary(ctx, "HARD_SWISH")
        return
    if np.dtype(x.dtype) == np.int16:  # the gate's int8 grid has zero point -128
        raise ctx.fail(f"no TFLite HARD_SWISH kernel for int16 inputs (16x8), "
                       f"and the int8 ADD / MUL chain's gate needs a nonzero zero point; "
                       f"{int16_kernels_text()}")
    sixth_scale = x.quant.scale / 6
    steps = hardswish_gate_steps(float(x.quant.scale[0]))
    if steps is None:
        gate_quant, clip = _gate_quant(x.quant), "NONE"
        half = ctx.graph.add_const(f"{ctx.op.name}_half", np.float32(0.5))
    else:
        gate_quant, clip = Quant(sixth_scale, 127 - 2 * steps), "RELU"
        half = ctx.graph.add_const(f"{ctx.op.name}_half", np.array(steps, np.int8),
                                   quant=Quant(sixth_scale, 0))  # 1/2 = n steps, exactly
    sixth = ctx.graph.add_tensor(f"{y.name}_sixth", x.shape, x.dtype,
                                 quant=Quant(sixth_scale, x.quant.zero_point))
    gate = ctx.graph.add_tensor(f"{y.name}_gate", x.shape, x.dtype, quant=gate_quant)
    ctx.emit("MUL", [x.name, ctx.graph.add_const(f"{ctx.op.name}_sixth", np.float32(1 / 6))],
             [sixth], fused_activation_function="NONE")
    ctx.emit("ADD", [sixth, half], [gate], fused_activation_function=clip)
    ctx.emit("MUL", [x.name, gate], [y.name], fused_activation_function="NONE")


def _last_axis(ctx: Lowering, axis: int) -> None:
    rank = ctx.input(0).rank
    if axis % rank != rank - 1:
        raise ctx.fail(f"{ctx.op.type} over axis {axis} of a rank-{rank} tensor; only the last "
                       f"axis is supported")


@register("Softmax", layout=softmax_layout)
def lower_softmax(ctx: Lowering, *, axis: int = -1) -> None:
    """softmax over the last axis -> SOFTMAX (beta 1). int8 output is (1/256, -128).

    The layout pass has already remapped `axis` to NHWC (over channels), or kept a rank-4
    tensor in NCHW order for another axis (`softmax_layout`).
    """
    _last_axis(ctx, axis)
    _unary(ctx, "SOFTMAX", beta=1.0)


@register("LogSoftmax", layout=softmax_layout)
def lower_logsoftmax(ctx: Lowering, *, axis: int = -1) -> None:
    """log(softmax(x)) over the last axis -> LOG_SOFTMAX. int8 output is (16/256, 127)."""
    _last_axis(ctx, axis)
    _unary(ctx, "LOG_SOFTMAX")


@register("LeakyRelu")
def lower_leakyrelu(ctx: Lowering, *, alpha: float = 0.01) -> None:
    """x if x >= 0 else alpha * x -> LEAKY_RELU. int8: the output has its own scale."""
    _unary(ctx, "LEAKY_RELU", alpha=float(alpha))


@register("Elu")
def lower_elu(ctx: Lowering, *, alpha: float = 1.0) -> None:
    """x if x > 0 else alpha * (exp(x) - 1), alpha 1 (TFLite's ELU has no alpha) -> ELU.
    int8: a lookup table over the 256 input values (activations.cc); own output scale."""
    if not math.isclose(alpha, 1.0, rel_tol=1e-6):
        raise ctx.fail(f"alpha {alpha} is not supported (TFLite ELU is alpha 1)")
    _unary(ctx, "ELU")


@register("Abs")
def lower_abs(ctx: Lowering) -> None:
    """|x| -> ABS. int8: the output has its own scale (the kernel rescales, version 2)."""
    _unary(ctx, "ABS")


@register("PRelu", layout=elementwise_layout)
def lower_prelu(ctx: Lowering) -> None:
    """x if x >= 0 else slope * x, slope a constant broadcast over x -> PRELU.

    int8: the slope becomes a per-tensor int8 constant (`quantize_constants`).
    """
    slope = ctx.input(1)
    if slope is None or not slope.is_const:
        raise ctx.fail("the slope must be a constant")
    ctx.emit("PRELU", [ctx.input(0).name, ctx.operand(1)], [ctx.output().name])


@register("Div", layout=elementwise_layout)
def lower_div(ctx: Lowering) -> None:
    """A / B with B a constant -> MUL by 1 / B (float to 1 ulp; int8 like any MUL).

    B an activation -> DIV, which has no int8 kernel: in a QDQ model it is a float island
    (the quantizer leaves such a division float, `quant.annotators.FLOAT_OPS`).
    """
    divisor = ctx.input(1)
    if not divisor.is_const:
        _binary(ctx, "DIV")
        return
    values = divisor.data if divisor.quant is None else divisor.quant.dequantize(divisor.data)
    if np.any(values == 0):
        raise ctx.fail("division by a constant that contains zero")
    reciprocal = ctx.graph.add_const(f"{divisor.name}_reciprocal",
                                     (1.0 / values.astype(np.float64)).astype(np.float32))
    ctx.emit("MUL", [ctx.input(0).name, reciprocal], [ctx.output().name],
             fused_activation_function="NONE")


@register("Sqrt")
def lower_sqrt(ctx: Lowering) -> None:
    """sqrt(x) -> SQRT, float32 only in TFLite: a float island in an int8 model."""
    _unary(ctx, "SQRT")


@register("Reciprocal")
def lower_reciprocal(ctx: Lowering) -> None:
    """1 / x -> DIV(1, x), float32 only in TFLite: a float island in an int8 model. After
    a Sqrt whose output is float (torch's rsqrt: one aten op, Q/DQ only around the pair),
    `passes.fusions.fuse_rsqrt` makes the two one RSQRT, which has an int8 kernel."""
    one = ctx.graph.add_const(f"{ctx.op.name}_one", np.float32(1.0))
    ctx.emit("DIV", [one, ctx.input(0).name], [ctx.output().name],
             fused_activation_function="NONE")


@register("Exp")
def lower_exp(ctx: Lowering) -> None:
    """exp(x) -> EXP. int8: a lookup table over the 256 input values (TFLite exp.cc,
    version 2); the output has its own scale."""
    _unary(ctx, "EXP")


#: constant exponents whose power is one cheaper builtin, exactly (IEEE x * x and sqrt are
#: correctly rounded, as pow is for these exponents): x^2 is MUL(x, x), which has an int8
#: kernel; x^0.5 is SQRT. Any other exponent is POW (float32 only in TFLite: pow.cc).
POW_BUILTINS = {2.0: "MUL", 0.5: "SQRT"}


def pow_builtin(exponent: float | None) -> str:
    """The builtin x ** `exponent` becomes (`POW_BUILTINS`; None, an exponent tensor: POW).
    The quantizer reads it too (`quant.annotators.annotate_pow`), so the two agree on
    which powers run in int8."""
    if exponent is None:
        return "POW"
    return next((b for e, b in POW_BUILTINS.items()
                 if math.isclose(exponent, e, rel_tol=1e-6)), "POW")


@register("Pow", layout=elementwise_layout)
def lower_pow(ctx: Lowering) -> None:
    """x ^ y -> MUL(x, x) for a constant y of 2, SQRT for 0.5 (`pow_builtin`), else POW
    with numpy broadcasting. POW and SQRT have no int8 kernel: a float island in an int8
    model; MUL(x, x) is int8 like any MUL (own output scale)."""
    x, exponent, y = ctx.input(0), ctx.input(1), ctx.output()
    value = None
    if exponent.is_const and exponent.data.size == 1:
        value = float(np.asarray(_values(exponent)).reshape(-1)[0])
    builtin = pow_builtin(value)
    if builtin == "MUL":
        ctx.emit("MUL", [x.name, x.name], [y.name], fused_activation_function="NONE")
    elif builtin == "SQRT":
        _unary(ctx, "SQRT")
    else:
        ctx.emit("POW", [x.name, ctx.operand(1)], [y.name])


def _values(tensor) -> np.ndarray:
    return tensor.data if tensor.quant is None else tensor.quant.dequantize(tensor.data)


@register("HardSigmoid")
def lower_hardsigmoid(ctx: Lowering, *, alpha: float = 0.2, beta: float = 0.5) -> None:
    """clip(alpha * x + beta, 0, 1) (PyTorch: alpha 1/6, beta 1/2) -> [MUL by 6 alpha] ->
    ADD 6 beta with fused RELU6 -> MUL by 1/6. TFLite has no hard-sigmoid builtin.

    int8: the tensor after the RELU6 takes the output's zero point and 6 x its scale,
    so the MUL by 1/6 is an exact integer identity and the ADD rounds once, where the
    QDQ model rounds (a [0, 6] tensor at scale 6/255 would round 6 x coarser than the
    output); the scaled input (alpha != 1/6) takes the input's, times 6 alpha (exact
    too). Only alpha > 0 is supported.
    """
    if alpha <= 0:
        raise ctx.fail(f"alpha {alpha} <= 0 is not supported")
    x, y = ctx.input(0), ctx.output()
    source = x.name
    if not math.isclose(6 * alpha, 1.0, rel_tol=1e-6):
        quant = None if x.quant is None else Quant(x.quant.scale * 6 * alpha, x.quant.zero_point)
        scaled = ctx.graph.add_tensor(f"{y.name}_scaled", x.shape, x.dtype, quant=quant)
        ctx.emit("MUL", [source, ctx.graph.add_const(f"{ctx.op.name}_alpha",
                                                     np.float32(6 * alpha))],
                 [scaled], fused_activation_function="NONE")
        source = scaled
    quant = None if y.quant is None else Quant(y.quant.scale * 6, y.quant.zero_point)
    relu6 = ctx.graph.add_tensor(f"{y.name}_relu6", x.shape, x.dtype, quant=quant)
    ctx.emit("ADD", [source, ctx.graph.add_const(f"{ctx.op.name}_beta", np.float32(6 * beta))],
             [relu6], fused_activation_function="RELU6")
    ctx.emit("MUL", [relu6, ctx.graph.add_const(f"{ctx.op.name}_sixth", np.float32(1 / 6))],
             [y.name], fused_activation_function="NONE")


@register("Gelu")
def lower_gelu(ctx: Lowering, *, approximate: str = "none") -> None:
    """GELU, exact (erf) or its tanh approximation -> GELU (also what `fuse_gelu` makes of
    the Erf chain torch.onnx writes). int8: the output has its own scale."""
    if approximate not in ("none", "tanh"):
        raise ctx.fail(f"approximate={approximate!r} is not supported")
    _unary(ctx, "GELU", approximate=approximate == "tanh")
