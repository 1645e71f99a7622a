"""Passes that make a lowered int8 graph meet the TFLite int8 quantization spec.

Each does nothing on a float graph, or on the ops of a quantized graph that
`isolate_float_ops` left in float. Order matters: constants first,
then output constraints (fixed scales, same scales), and biases last, since a
bias scale is input scale x weight scale and the steps before may retarget an
input's scale.

No pass changes a QDQ tensor's scale or zero point silently: where a TFLite
kernel cannot write the parameters the QDQ model gives its output, the op
writes the parameters it can and a QUANTIZE requantizes to the QDQ ones, and
every such step is recorded with `Graph.note` (which `convert` reports).
"""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.builtins import fixed_output, record
from edgecnn.export.tflite.graph import Graph, Op, Quant, Tensor
from edgecnn.export.tflite.passes.islands import is_int8_op
from edgecnn.qmath import bias_safe_weight_scale, quantize_bias, quantize_symmetric

INT8 = np.dtype(np.int8)
INT16 = np.dtype(np.int16)


def _weights_input(op: Op) -> tuple[int, int] | None:
    """(weights input index, per-channel axis) of a weighted builtin, else None."""
    rec = record(op)
    return rec.weights if rec else None


def _int8_contract(op: Op) -> str | None:
    rec = record(op)
    return rec.int8 if rec else None


def _symmetric(data: np.ndarray, axis: int | None) -> tuple[np.ndarray, Quant]:
    """int8 in [-127, 127], zero point 0, one scale per slice along `axis` (or per tensor)."""
    q, scale = quantize_symmetric(data, axis)
    return q, Quant(scale, np.zeros(scale.size, np.int64), axis)


def _symmetric16(data: np.ndarray) -> tuple[np.ndarray, Quant]:
    """Per-tensor int16 in [-32767, 32767], zero point 0: a constant operand of a 16x8 op
    (its kernel checks zero point 0 on every int16 input; mul.cc, add.cc)."""
    scale = float(np.abs(data).max()) / 32767.0 or 1e-8
    q = np.clip(np.round(data / scale), -32767, 32767).astype(np.int16)
    return q, Quant(scale, 0)


def _asymmetric(data: np.ndarray) -> tuple[np.ndarray, Quant]:
    """Per-tensor int8 covering [min, max] and zero."""
    lo, hi = min(float(data.min()), 0.0), max(float(data.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1e-8
    zero = int(np.clip(round(-128 - lo / scale), -128, 127))
    q = np.clip(np.round(data / scale) + zero, -128, 127).astype(np.int8)
    return q, Quant(scale, zero)


def _weights(graph: Graph, op: Op, tensor: Tensor, axis: int) -> str:
    if tensor.dtype == INT8 and tensor.quant is not None and not tensor.quant.zero_point.any():
        return tensor.name
    values = tensor.data if tensor.quant is None else tensor.quant.dequantize(tensor.data)
    q, quant = _symmetric(values.astype(np.float32), axis)
    kind = ("float weights of an int8 op quantized by the converter (symmetric, per channel)"
            if tensor.quant is None else
            "asymmetric or per-tensor weights requantized symmetric per channel by the converter")
    graph.note(kind, f"{op.name} ({op.type})")
    return graph.add_const(f"{tensor.name}_sym", q, quant=quant)


def quantize_constants(graph: Graph) -> None:
    """In place: weights become symmetric int8 (per channel), other float constants
    (operands of ADD, MUL, CONCATENATION ...) per-tensor int8, or per-tensor symmetric int16
    for an op whose data input is int16 (a 16x8 op)."""
    if not graph.quantized:
        return
    for op in graph.ops:
        if not is_int8_op(graph, op):
            continue
        weights = _weights_input(op)
        for i, name in enumerate(op.inputs):
            tensor = graph.tensors.get(name) if name else None
            if tensor is None or not tensor.is_const:
                continue
            if weights and i == weights[0]:
                op.inputs[i] = _weights(graph, op, tensor, weights[1])
            elif weights and i == record(op).bias_input:
                continue  # biases: quantize_biases
            elif tensor.dtype == np.int32:
                continue  # shapes (TRANSPOSE_CONV's output shape)
            elif _int8_contract(op) == "same":
                continue  # on the op's own grid: align_same_scale
            elif tensor.dtype == np.float32 or (tensor.quant and not tensor.quant.per_tensor):
                values = tensor.data if tensor.quant is None \
                    else tensor.quant.dequantize(tensor.data)
                wide = graph.tensor(op.inputs[record(op).data_input]).dtype == INT16 \
                    if record(op) else False
                q, quant = _symmetric16(values) if wide else _asymmetric(values)
                op.inputs[i] = graph.add_const(f"{name}_q", q, quant=quant)


def _requantize_after(graph: Graph, op: Op, quant: Quant, out: list[Op], why: str) -> None:
    """`op` writes a new tensor with `quant`; a QUANTIZE converts it to the QDQ output's
    parameters, which stay as the QDQ model gives them (noted under `why`)."""
    target = graph.tensor(op.outputs[0])
    staged = graph.add_tensor(f"{target.name}_{op.type.lower()}", target.shape, target.dtype,
                              quant=quant)
    op.outputs[0] = staged
    out.append(op)
    out.append(Op("QUANTIZE", [staged], [target.name], name=op.name, domain="tflite"))
    graph.note(why, f"{op.name} ({op.type})")


def fix_output_quant(graph: Graph) -> None:
    """LOGISTIC / SOFTMAX / LOG_SOFTMAX / TANH write their fixed int8 parameters, and the
    fixed int16 ones (`Builtin.fixed_output16`) on int16 outputs (in place).

    When the QDQ model gives the output other parameters (onnxruntime's quantize_static
    calibrates them), a tensor inside the graph takes the fixed ones, noted (its readers
    rescale anyway, and the fixed grid is at least as fine as a calibrated [0, 1] one; a
    QUANTIZE would round twice); a model output keeps the QDQ parameters through a
    QUANTIZE. edgecnn's quantizer gives the fixed ones, so its files need neither.
    """
    if not graph.quantized:
        return
    outputs, ops = set(graph.outputs), []
    for op in graph.ops:
        target = graph.tensor(op.outputs[0]) if op.outputs else None
        fixed = fixed_output(op, str(target.dtype)) if target is not None else None
        if fixed is None or target.quant is None or target.quant.same_as(Quant(*fixed)):
            ops.append(op)
        elif target.name not in outputs:
            target.quant = Quant(*fixed)
            graph.note("output given the kernel's fixed parameters instead of the QDQ "
                       "model's", f"{op.name} ({op.type})", changed=target.name)
            ops.append(op)
        else:
            _requantize_after(graph, op, Quant(*fixed), ops,
                              "QUANTIZE added: the kernel has a fixed output scale")
    graph.ops = ops


#: copying builtins whose every input shares the output's parameters
MULTI_INPUT_SAME = ("CONCATENATION", "MAXIMUM", "MINIMUM")


def align_same_scale(graph: Graph) -> None:
    """Inputs and output of copying ops (pools, reshapes, pads, concat, max / min) share
    parameters.

    In place. One-input ops whose QDQ output has other parameters than the
    input: the op writes the input's, and a QUANTIZE requantizes to the output's.
    CONCATENATION, MAXIMUM and MINIMUM keep their output's parameters (a constant input
    is quantized onto them); a differing input is retargeted
    (noted: its producer then writes the concat's parameters directly) when only
    the concat reads it and its producer can write any scale, else requantized
    by a QUANTIZE.
    """
    if not graph.quantized:
        return
    outputs, ops = set(graph.outputs), []
    producers, consumers = graph.producers(), graph.consumers()
    for op in graph.ops:
        if _int8_contract(op) != "same" or not is_int8_op(graph, op):
            ops.append(op)
            continue
        target = graph.tensor(op.outputs[0])
        if op.type in MULTI_INPUT_SAME:
            op.inputs = [_aligned_input(graph, name, target.quant, op, producers, consumers,
                                        outputs, ops) for name in op.inputs]
            ops.append(op)
            continue
        source = graph.tensor(op.inputs[record(op).data_input])
        if op.type == "PADV2":  # the pad value shares the input's parameters
            op.inputs[2] = _aligned_const(graph, graph.tensor(op.inputs[2]), source.quant,
                                          source.dtype)
        if len(op.outputs) > 1:
            _align_outputs(graph, op, source.quant, ops)
        elif source.quant.same_as(target.quant):
            ops.append(op)
        else:
            _requantize_after(graph, op, source.quant, ops,
                              "QUANTIZE added: the kernel needs equal input and output scales")
    graph.ops = ops


def _align_outputs(graph: Graph, op: Op, quant: Quant, out: list[Op]) -> None:
    """A copying op with several outputs (SPLIT): each writes `quant`; an output the QDQ
    model gives other parameters is requantized to them by a QUANTIZE (noted)."""
    requantize = []
    for i, name in enumerate(op.outputs):
        target = graph.tensor(name)
        if target.quant.same_as(quant):
            continue
        staged = graph.add_tensor(f"{name}_{op.type.lower()}", target.shape, target.dtype,
                                  quant=quant)
        op.outputs[i] = staged
        requantize.append(Op("QUANTIZE", [staged], [name], name=op.name, domain="tflite"))
        graph.note("QUANTIZE added: the kernel needs equal input and output scales",
                   f"{op.name} ({op.type})")
    out.extend([op, *requantize])


def _aligned_const(graph: Graph, tensor: Tensor, quant: Quant, dtype: np.dtype = INT8) -> str:
    if tensor.quant is not None and tensor.quant.same_as(quant):
        return tensor.name
    values = tensor.data if tensor.quant is None else tensor.quant.dequantize(tensor.data)
    zero, scale = int(quant.zero_point[0]), float(quant.scale[0])
    info = np.iinfo(dtype)
    q = np.clip(np.round(values / scale) + zero, info.min, info.max).astype(dtype)
    return graph.add_const(f"{tensor.name}_aligned", q, quant=quant)


def _aligned_input(graph: Graph, name: str, quant: Quant, op: Op, producers: dict[str, Op],
                   consumers: dict[str, list[Op]], outputs: set[str], ops: list[Op]) -> str:
    tensor = graph.tensor(name)
    dtype = graph.tensor(op.outputs[0]).dtype
    if tensor.is_const:
        return _aligned_const(graph, tensor, quant, dtype)
    if tensor.quant.same_as(quant):
        return name
    producer = producers.get(name)
    if (producer is not None and _int8_contract(producer) == "requantize"
            and len(consumers.get(name, [])) == 1
            and name not in outputs and name not in graph.inputs):
        tensor.quant = quant
        graph.note(f"{op.type} input retargeted to the output's scale (its producer "
                   "requantizes to it directly)", name, changed=name)
        return name
    staged = graph.add_tensor(f"{name}_requant", tensor.shape, dtype, quant=quant)
    ops.append(Op("QUANTIZE", [name], [staged], name=op.name, domain="tflite"))
    return staged


def set_int16_options(graph: Graph) -> None:
    """In place: an op reading int16 data takes its record's `int16_options` (ADD / SUB:
    pot_scale_int16 false, the general-scale 16x8 kernel; the schema's default true asks
    for power-of-two scales, op_version.cc)."""
    for op in graph.ops:
        rec = record(op)
        if rec is None or not rec.int16_options or not op.inputs:
            continue
        if graph.tensor(op.inputs[rec.data_input]).dtype == INT16:
            op.attrs.update(dict(rec.int16_options))


def _fit_bias_range(graph: Graph, op: Op, x: Tensor, w: Tensor, bias: np.ndarray) -> Tensor:
    """The weights of `op`, with channel scales raised where the int32 bias would not fit
    (`edgecnn.qmath.bias_safe_weight_scale`), noted; `w` itself when every bias fits."""
    axis = _weights_input(op)[1]
    channels = w.shape[axis]
    old = np.broadcast_to(w.quant.scale, (channels,)).astype(np.float32)
    new = bias_safe_weight_scale(bias, float(x.quant.scale[0]), old, w.data.size // channels)
    if np.array_equal(new, old):
        return w
    shape = [1] * w.rank
    shape[axis] = -1
    ratio = (old.astype(np.float64) / new).reshape(shape)
    q = np.clip(np.round(w.data.astype(np.float64) * ratio), -127, 127).astype(np.int8)
    graph.note("weight scale raised so the int32 bias fits", f"{op.name} ({op.type})",
               changed=w.name)
    name = graph.add_const(f"{w.name}_bias_fit", q,
                           quant=Quant(new, np.zeros(channels, np.int64), axis))
    op.inputs[_weights_input(op)[0]] = name
    return graph.tensor(name)


def quantize_biases(graph: Graph) -> None:
    """In place: every conv / fully-connected bias becomes int32 with
    scale = input scale x weight scale (per channel) and zero point 0, rounded and
    clamped in float64; where a bias would not fit, the weight scale rises first.
    A 16x8 op (int16 input) gets an int64 bias at the same scale, as its TFLite kernel
    wants (conv.cc / depthwise_conv.cc / fully_connected.cc, 16x8 path)."""
    if not graph.quantized:
        return
    for op in graph.ops:
        if _weights_input(op) is None or not is_int8_op(graph, op):
            continue
        rec = record(op)
        x, w, b = (graph.tensor(op.inputs[i]) for i in (rec.data_input, rec.weights[0],
                                                         rec.bias_input))
        wide = x.dtype == INT16
        scale = (x.quant.scale[0] * w.quant.scale).astype(np.float32)
        if (b.dtype == np.int32 and b.quant is not None and b.quant.scale.size == scale.size
                and np.allclose(b.quant.scale, scale, rtol=1e-6) and not b.quant.zero_point.any()):
            q = b.data
        else:
            values = b.data.astype(np.float64) if b.quant is None else \
                (b.data.astype(np.float64) - b.quant.zero_point) * b.quant.scale.astype(np.float64)
            if wide:  # int64: no range to fit
                q = np.round(values / scale.astype(np.float64)).astype(np.int64)
            else:
                w = _fit_bias_range(graph, op, x, w, values)
                scale = (x.quant.scale[0] * w.quant.scale).astype(np.float32)
                q = quantize_bias(values, scale)
        quant = Quant(scale, np.zeros(scale.size, np.int64), 0 if scale.size > 1 else None)
        dtype, suffix = (np.int64, "int64") if wide else (np.int32, "int32")
        op.inputs[rec.bias_input] = graph.add_const(f"{b.name}_{suffix}", q.astype(dtype),
                                                    quant=quant)
