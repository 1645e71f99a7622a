"""Exact rewrites of QDQ ONNX models for onnxruntime's fast int8 paths (torch-free).

- `uint8_activations`: int8 activation Q/DQ re-encoded as uint8 (zero point +
  128, the same real values): onnxruntime's fast x86 kernels are U8S8.
- `global_average_pools`: ReduceMean over H and W (keepdims) becomes
  GlobalAveragePool, which onnxruntime fuses with its Q/DQ into
  QLinearGlobalAveragePool on uint8 data; a ReduceMean runs in float between a
  DequantizeLinear and a QuantizeLinear of the whole feature map (squeeze-excite
  has one per block).
- `pad_input_channels` / `unpad_input_channels`: the image gets zero channels up
  to a multiple of 4 (a Pad before the input QuantizeLinear) and the first
  convolutions zero weights for them. The function is unchanged, bit for bit
  (zero quantizes to the zero point, zero weights add nothing), but onnxruntime's
  x86 int8 convolution runs a 3-channel stem ~30% slower than a 4-channel one
  (benchmarks/onnx_latency.py). The TFLite converter undoes it on import:
  there the padding would only cost.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INPUT_CHANNEL_MULTIPLE = 4
PAD_NODE = "edgecnn_pad_input_channels"


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def uint8_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Re-encode int8 activation Q/DQ as uint8 (zero point + 128): the same real values.

    Weights (DequantizeLinear of an initializer) stay int8, biases int32.
    Returns a new model; the input is not modified.
    """
    model = _copy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    shifted: dict[str, str] = {}
    changed = set()
    for node in graph.node:
        if node.op_type not in QDQ_OPS or node.input[0] in inits or len(node.input) < 3:
            continue
        zero_point = inits[node.input[2]]
        if zero_point.data_type != TensorProto.INT8:
            continue
        if zero_point.name not in shifted:
            value = numpy_helper.to_array(zero_point).astype(np.int16) + 128
            new = numpy_helper.from_array(value.astype(np.uint8), f"{zero_point.name}_u8")
            graph.initializer.append(new)
            shifted[zero_point.name] = new.name
        node.input[2] = shifted[zero_point.name]
        if node.op_type == "QuantizeLinear":
            changed.add(node.output[0])
    for info in list(graph.value_info) + list(graph.output):
        if info.name in changed:
            info.type.tensor_type.elem_type = TensorProto.UINT8
    _drop_unused_initializers(graph)
    return model


def global_average_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """ReduceMean(x, axes=(2, 3) or (-2, -1), keepdims=1) -> GlobalAveragePool(x), a copy."""
    model = _copy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type != "ReduceMean" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = sorted(numpy_helper.to_array(inits[node.input[1]]).tolist())
        if attributes.get("keepdims", 1) != 1 or axes not in ([2, 3], [-2, -1]) \
                or _rank(graph, node.input[0]) != 4:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
    _drop_unused_initializers(graph)
    return model


def _rank(graph: onnx.GraphProto, name: str) -> int | None:
    """The tensor's rank from the graph's inputs or value_info; None when unrecorded."""
    for info in [*graph.value_info, *graph.input]:
        if info.name == name:
            return len(info.type.tensor_type.shape.dim)
    return None


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def _input_convs(graph: onnx.GraphProto):
    """(image input, its QuantizeLinear, [(DequantizeLinear, Conv, weight initializer)])
    when the image feeds only plain (group 1) convolutions through one QuantizeLinear,
    else None."""
    inits = {i.name: i for i in graph.initializer}
    images = [i for i in graph.input if i.name not in inits]
    if len(images) != 1:
        return None
    image = images[0]
    users = _consumers(graph, image.name)
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        return None
    quantize = users[0]
    convs = []
    for dequantize in _consumers(graph, quantize.output[0]):
        if dequantize.op_type != "DequantizeLinear":
            return None
        for conv in _consumers(graph, dequantize.output[0]):
            group = next((a.i for a in conv.attribute if a.name == "group"), 1)
            if conv.op_type != "Conv" or group != 1 or conv.input[0] != dequantize.output[0]:
                return None
            weight_dq = next((n for n in graph.node if conv.input[1] in n.output), None)
            if weight_dq is None or weight_dq.op_type != "DequantizeLinear" \
                    or weight_dq.input[0] not in inits:
                return None
            convs.append((dequantize, conv, inits[weight_dq.input[0]]))
    return (image, quantize, convs) if convs else None


def pad_input_channels(model: onnx.ModelProto,
                       multiple: int = INPUT_CHANNEL_MULTIPLE) -> onnx.ModelProto:
    """Zero-pad the image's channels (NCHW) to `multiple`, and the first convolutions'
    weights with it. Models of another shape come back unchanged (a copy)."""
    model = _copy(model)
    graph = model.graph
    found = _input_convs(graph)
    if found is None or multiple <= 1:
        return model
    image, quantize, convs = found
    dims = image.type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[1].HasField("dim_value"):
        return model
    channels = dims[1].dim_value
    extra = -channels % multiple
    if extra == 0:
        return model
    padded = f"{image.name}_channels_padded"
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64),
                                   f"{PAD_NODE}_pads")
    graph.initializer.append(pads)
    index = list(graph.node).index(quantize)
    graph.node.insert(index, helper.make_node("Pad", [image.name, pads.name], [padded],
                                              name=PAD_NODE, mode="constant"))
    quantize.input[0] = padded
    for weight in {id(w): w for *_, w in convs}.values():
        value = numpy_helper.to_array(weight)
        widened = np.concatenate([value, np.zeros((value.shape[0], extra, *value.shape[2:]),
                                                  value.dtype)], axis=1)
        weight.CopyFrom(numpy_helper.from_array(widened, weight.name))
    _set_channels(graph, _padded_tensors(quantize, convs),
                  channels + extra)
    return model


def unpad_input_channels(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo `pad_input_channels` (only its own Pad, only when the extra weights are zero)."""
    if not any(n.name == PAD_NODE for n in model.graph.node):
        return model
    original, model = model, _copy(model)
    graph = model.graph
    pad = next(n for n in graph.node if n.name == PAD_NODE)
    inits = {i.name: i for i in graph.initializer}
    extra = int(numpy_helper.to_array(inits[pad.input[1]])[5])
    (quantize,) = _consumers(graph, pad.output[0])
    quantize.input[0] = pad.input[0]
    graph.node.remove(pad)
    found = _input_convs(graph)
    if found is None:
        return original
    image, quantize, convs = found
    for weight in {id(w): w for *_, w in convs}.values():
        value = numpy_helper.to_array(weight)
        if np.any(value[:, value.shape[1] - extra:]):
            return original
        weight.CopyFrom(numpy_helper.from_array(value[:, :value.shape[1] - extra], weight.name))
    channels = image.type.tensor_type.shape.dim[1].dim_value
    _set_channels(graph, _padded_tensors(quantize, convs), channels)
    _drop_unused_initializers(graph)
    return model


def _padded_tensors(quantize: onnx.NodeProto, convs) -> set[str]:
    """The tensors whose channel dimension the padding changes: the quantized image,
    its dequantized copies and the dequantized weights."""
    return {quantize.output[0], *(dq.output[0] for dq, _, _ in convs),
            *(conv.input[1] for _, conv, _ in convs)}


def _set_channels(graph: onnx.GraphProto, names: set[str], channels: int) -> None:
    for info in graph.value_info:
        if info.name in names and len(info.type.tensor_type.shape.dim) == 4:
            info.type.tensor_type.shape.dim[1].dim_value = channels


#: ops whose float weights onnxruntime's WeightBiasQuantization quantizes when their input
#: is a per-tensor DequantizeLinear
WEIGHT_QUANTIZED_BY_ORT = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(node: onnx.NodeProto, weight: np.ndarray) -> int:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return weight.shape[1] * int(attrs.get("group", 1))
    if node.op_type == "Gemm":
        return weight.shape[1] if attrs.get("transB", 0) else weight.shape[0]
    return weight.shape[0]  # ConvTranspose: (C, O / group, kH, kW)


def float_layers_per_axis_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep float layers float on onnxruntime: a Conv / ConvTranspose / Gemm with float
    weight initializers that reads a per-tensor DequantizeLinear gets its own
    DequantizeLinear of the same tensor with the scale and zero point repeated per
    channel (axis 1). The values are the same, bit for bit; but onnxruntime's
    WeightBiasQuantization transformer (graph optimization level 1, onnxruntime >= 1.20,
    core/optimizer/qdq_transformer/weight_bias_quantization.cc) quantizes the float
    weights of such an op to symmetric per-tensor int8 when its input DequantizeLinear has
    a scalar scale, which would make a `--keep-float` layer int8 (and crush per-channel
    ranges). Returns a new model; the input is not modified.
    """
    model = _copy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    added: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        dq = producer.get(node.input[0]) if node.input else None
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if (node.op_type in WEIGHT_QUANTIZED_BY_ORT and weight is not None
                and weight.data_type == TensorProto.FLOAT and dq is not None
                and dq.op_type == "DequantizeLinear" and dq.input[1] in inits
                and numpy_helper.to_array(inits[dq.input[1]]).size == 1):
            channels = _input_channels(node, numpy_helper.to_array(weight))
            key = (node.input[0], channels)
            if key not in added:
                name = f"{node.input[0]}_per_axis"
                inputs = [dq.input[0]]
                for i, suffix in ((1, "scale"), (2, "zero_point")):
                    if len(dq.input) <= i or not dq.input[i]:
                        continue
                    value = numpy_helper.to_array(inits[dq.input[i]]).reshape(-1)
                    tensor = numpy_helper.from_array(np.repeat(value, channels),
                                                     f"{name}_{suffix}")
                    graph.initializer.append(tensor)
                    inputs.append(tensor.name)
                nodes.append(helper.make_node("DequantizeLinear", inputs, [name], axis=1,
                                              name=f"{dq.name or name}_per_axis"))
                added[key] = name
            node.input[0] = added[key]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model
