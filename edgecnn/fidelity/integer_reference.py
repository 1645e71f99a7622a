"""The integer reference of a QDQ model: what the int8 spec says each op computes.

For every quantized activation of a QDQ ONNX model (keys as in `tensors`), the
op that produces it is recomputed from the int8 tensors a runtime actually fed
it: integer accumulation (int8 x int8 products plus the int32 bias, exact in
float64), the real-valued result `acc * s_in * s_w` (per channel), the fused
clamp, then one rounding to the output grid, half to even (the TFLite int8
spec's requantization, https://ai.google.dev/edge/litert/models/quantization_spec,
done without the float32 rounding of the multiplier that onnxruntime and XNNPACK
use and without the fixed-point double rounding of the builtin kernels).

`op_errors` then says, op by op, how often a runtime's own output differs from
the reference computed from its own inputs: the error the op adds by itself,
separated from what it inherits. A mismatch whose exact value lies within
`TIE_BAND` of a half step is a rounding decision (ties, float accumulation
order, float multiplier); one farther away is an arithmetic difference (a
different bias, scale, pooling divisor or a saturating kernel).

Covers Conv (any group count), Gemm, Add, GlobalAveragePool / ReduceMean over
H and W, and the identity ops (Reshape, Flatten, a Q of a DQ with the same
scale). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from edgecnn.fidelity.tensors import _quantize_nodes

#: distance (in output steps) from a half step within which a mismatch counts as a
#: rounding decision rather than an arithmetic difference
TIE_BAND = 0.05
IDENTITY_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "DequantizeLinear")


@dataclass
class Unit:
    """One quantized output and the op that produces it."""

    key: str
    op: str
    inputs: list[tuple[str, float, int]]      # (key, scale, int8 zero point)
    scale: float
    zero_point: int
    clamp: tuple[float, float] = (-np.inf, np.inf)
    weight: np.ndarray | None = None          # int8
    weight_scale: np.ndarray | None = None    # per output channel
    bias: np.ndarray | None = None            # int32
    attrs: dict = field(default_factory=dict)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _int8_zero(zero: np.ndarray) -> int:
    """A zero point on the int8 grid (uint8 ones shifted by -128, as `tensors` does)."""
    value = int(np.asarray(zero).reshape(-1)[0])
    return value - 128 if np.asarray(zero).dtype == np.uint8 else value


def units(model: onnx.ModelProto | str | Path) -> list[Unit]:
    """The model's quantized outputs and their producing ops, in graph order; ops the
    reference does not cover get `op` = their type and are skipped by `op_errors`."""
    model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    const = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes = _quantize_nodes(model)
    key_of_q = {node.output[0]: key for key, node in nodes}

    def activation(name: str) -> tuple[str, float, int] | None:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in key_of_q:
            return None
        return key_of_q[dq.input[0]], float(const[dq.input[1]]), _int8_zero(const[dq.input[2]])

    def dequantized_constant(name: str) -> tuple[np.ndarray, np.ndarray] | None:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in const:
            return None
        return const[dq.input[0]], np.asarray(const[dq.input[1]], np.float64).reshape(-1)

    found = []
    for key, q in nodes:
        unit = Unit(key, "input", [], float(const[q.input[1]]), _int8_zero(const[q.input[2]]))
        found.append(unit)
        node = producer.get(q.input[0])
        if node is not None and node.op_type == "Clip":
            low = const.get(node.input[1]) if len(node.input) > 1 else None
            high = const.get(node.input[2]) if len(node.input) > 2 else None
            unit.clamp = (-np.inf if low is None else float(low),
                          np.inf if high is None else float(high))
            node = producer.get(node.input[0])
        elif node is not None and node.op_type == "Relu":
            unit.clamp = (0.0, np.inf)
            node = producer.get(node.input[0])
        if node is None or node.op_type == "Pad":
            continue
        unit.op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in IDENTITY_OPS:
            source = activation(node.input[0]) if node.op_type != "DequantizeLinear" else \
                (key_of_q.get(node.input[0]), float(const[node.input[1]]),
                 _int8_zero(const[node.input[2]]))
            unit.op, unit.inputs = "Identity", [source] if source and source[0] else []
        elif node.op_type in ("Conv", "Gemm"):
            weight, bias = dequantized_constant(node.input[1]), None
            if len(node.input) > 2:
                bias = dequantized_constant(node.input[2])
            unit.inputs = [activation(node.input[0])]
            unit.weight, unit.weight_scale = weight
            unit.bias = None if bias is None else bias[0].astype(np.int64)
            unit.attrs = attrs
        elif node.op_type == "Add":
            unit.inputs = [activation(node.input[0]), activation(node.input[1])]
        elif node.op_type in ("GlobalAveragePool", "ReduceMean"):
            unit.inputs = [activation(node.input[0])]
        if any(i is None for i in unit.inputs):
            unit.op, unit.inputs = node.op_type + " (not from int8 inputs)", []
    return found


def accumulator_overflow_risk(model_units: list[Unit]) -> dict[str, list[int]]:
    """{key: output channels} of convs / fully connected ops whose int32 bias leaves
    less than fan-in x 255 x 127 of headroom: an int32 accumulator (onnxruntime's
    QLinearConv, XNNPACK, the builtin kernels) can wrap there, where a float one
    (fake quantization) does not. Such a bias comes from a weight scale floored
    near float32 eps (a channel pruned or BN-folded to ~0 weights)."""
    found = {}
    for unit in model_units:
        if unit.bias is None or unit.weight is None:
            continue
        fan_in = int(np.prod(unit.weight.shape[1:]))
        edge = np.abs(unit.bias) > 2 ** 31 - 1 - fan_in * 255 * 127
        if edge.any():
            found[unit.key] = np.flatnonzero(edge).tolist()
    return found


def _conv(x: np.ndarray, unit: Unit) -> np.ndarray:
    """Exact integer convolution (float64 holds every int8 x int8 sum here), NCHW."""
    w = unit.weight.astype(np.float64)
    group = int(unit.attrs.get("group", 1))
    if w.shape[1] * group < x.shape[1]:
        x = x[:, :w.shape[1] * group]
    elif w.shape[1] * group > x.shape[1]:  # the padded-stem variant's zero weights
        w = w[:, :x.shape[1] // group]
    pads = unit.attrs.get("pads", [0, 0, 0, 0])
    sh, sw = unit.attrs.get("strides", [1, 1])
    dh, dw = unit.attrs.get("dilations", [1, 1])
    kh, kw = w.shape[2:]
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    win = sliding_window_view(x, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    if group == 1:
        return np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    if group == x.shape[1] == w.shape[0]:
        return np.einsum("nchwij,cij->nchw", win, w[:, 0])
    raise NotImplementedError(f"grouped convolution with {group} groups")


def exact(unit: Unit, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The unit's output before rounding, in output steps (real / s_out), float64."""
    xs = [(tensors[k].astype(np.float64) - z, s) for k, s, z in unit.inputs]
    if unit.op in ("Conv", "Gemm"):
        (x, s_in), = xs
        if unit.op == "Conv":
            acc = _conv(x, unit)
        else:
            w = unit.weight.astype(np.float64)
            acc = x.reshape(len(x), -1) @ (w.T if unit.attrs.get("transB", 0) else w)
        shape = (1, -1) + (1,) * (acc.ndim - 2)
        if unit.bias is not None:
            acc = acc + unit.bias.astype(np.float64).reshape(shape)
        real = acc * s_in * unit.weight_scale.reshape(shape)
    elif unit.op == "Add":
        real = sum(x * s for x, s in xs)
    elif unit.op in ("GlobalAveragePool", "ReduceMean"):
        (x, s_in), = xs
        real = x.mean(axis=(2, 3), keepdims=True) * s_in
    elif unit.op == "Identity":
        (x, s_in), = xs
        real = x * s_in
    else:
        raise NotImplementedError(unit.op)
    return np.clip(real, *unit.clamp) / unit.scale


def requantize(steps: np.ndarray, unit: Unit) -> np.ndarray:
    """Round half to even, add the zero point, saturate to int8."""
    return np.clip(np.round(steps) + unit.zero_point, -128, 127).astype(np.int64)


@dataclass(frozen=True)
class OpError:
    """One op of one runtime: its outputs unlike the reference from its own inputs."""

    key: str
    op: str
    elements: int
    mismatches: int
    near_ties: int      # mismatches within TIE_BAND of a half step: a rounding decision
    max_steps: int

    @property
    def rate(self) -> float:
        return self.mismatches / self.elements if self.elements else 0.0


def op_errors(model_units: list[Unit], tensors: dict[str, np.ndarray]) -> list[OpError]:
    """Per covered op whose inputs and output the runtime exposed: its own error."""
    rows = []
    for unit in model_units:
        if not unit.inputs or unit.key not in tensors or \
                any(k not in tensors for k, _, _ in unit.inputs):
            continue
        try:
            steps = exact(unit, tensors)
        except NotImplementedError:
            continue
        got = tensors[unit.key].astype(np.int64).reshape(steps.shape)
        ref = requantize(steps, unit)
        wrong = got != ref
        tie = np.abs(np.abs(steps - np.floor(steps)) - 0.5) < TIE_BAND
        rows.append(OpError(unit.key, unit.op, int(got.size), int(wrong.sum()),
                            int((wrong & tie).sum()),
                            int(np.abs(got - ref).max()) if got.size else 0))
    return rows
