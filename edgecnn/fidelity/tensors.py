"""Every quantized activation of an int8 model, as each runtime computes it.

One key per quantized tensor, shared by all runtimes: the name of the float
tensor a QuantizeLinear quantizes in the QDQ ONNX model (`conv2d_2`,
`hardtanh_1`, `add`, ...). torch.export names the FX nodes, the ONNX exporter
keeps those names, and the TFLite converter names its int8 tensors after them,
so the same key finds the same tensor in the fake-quant program, in the ONNX
model (exposed as extra graph outputs) and in the .tflite (made subgraph
outputs, so XNNPACK has to write them out too). Values are the int8 integers,
NCHW, one array per key with the images stacked; uint8 variants are shifted
back by 128 and the padded-stem variant's extra input channels dropped.

Torch-free except `torch_tensors`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgecnn.export.onnx_passes import PAD_NODE

INPUT_KEY = "input"


def _quantize_nodes(model: onnx.ModelProto) -> list[tuple[str, onnx.NodeProto]]:
    """(key, QuantizeLinear node) in graph order; the input image's key is `input`."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        key = node.input[0]
        source = producer.get(key)
        if source is not None and source.name == PAD_NODE:
            key = source.input[0]
        found.append((key, node))
    return found


def quantized_keys(model: onnx.ModelProto | str | Path) -> list[str]:
    """The keys of a QDQ model's quantized activations, in graph order."""
    model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return [key for key, _ in _quantize_nodes(model)]


def onnx_tensors(model_path: str | Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """{key: int8 values} of every quantized activation on onnxruntime (CPU, default
    optimizations: the QDQ groups still fuse into QLinear ops, their outputs are
    the Q outputs exposed here)."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    nodes = _quantize_nodes(model)
    known = {o.name for o in model.graph.output}
    for _, node in nodes:
        if node.output[0] not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=node.output[0]))
            known.add(node.output[0])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [node.output[0] for _, node in nodes]
    values = session.run(names, {session.get_inputs()[0].name: np.asarray(images, np.float32)})
    channels = images.shape[1]
    out = {}
    for (key, _), value in zip(nodes, values, strict=True):
        value = value.astype(np.int16) - 128 if value.dtype == np.uint8 else value
        if key == INPUT_KEY:
            value = value[:, :channels]
        out[key] = value.astype(np.int8)
    return out


def _tflite_with_outputs(data: bytes, keys: list[str]) -> tuple[bytes, dict[str, int]]:
    """The flatbuffer with every int8 tensor named by `keys` made a subgraph output."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    subgraph = model.subgraphs[0]
    names = {}
    for index, tensor in enumerate(subgraph.tensors):
        if tensor.type == schema.TensorType.INT8:
            names[tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name] = index
    found = {}
    for key in keys:
        if key in names:
            found[key] = names[key]
            continue
        # a lowering that splits an op names its int8 result `<key>_<role>` (mean_mean)
        suffixed = [n for n in names if n.startswith(key + "_")
                    and not n[len(key) + 1:].isdigit()]
        if len(suffixed) == 1:
            found[key] = names[suffixed[0]]
    outputs = list(subgraph.outputs)
    subgraph.outputs = outputs + [i for i in found.values() if i not in outputs
                                  and i not in list(subgraph.inputs)]
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), found


def tflite_tensors(model_path: str | Path, images: np.ndarray, keys: list[str], *,
                   delegate: bool = True) -> dict[str, np.ndarray]:
    """{key: int8 values} on LiteRT, XNNPACK (`delegate=True`) or the builtin kernels;
    the file's output tensor stands for the last key. Images one per invocation."""
    from edgecnn.runtime.backends.tflite import interpreter
    from edgecnn.verify.litert import quantize_input

    data = Path(model_path).read_bytes()
    patched, found = _tflite_with_outputs(data, keys)
    it = interpreter(patched, delegate=delegate)
    source = it.get_input_details()[0]
    output = it.get_output_details()[0]["index"]
    found.setdefault(keys[-1], output)
    collected: dict[str, list[np.ndarray]] = {k: [] for k in found}
    for image in np.asarray(images, np.float32):
        it.set_tensor(source["index"], quantize_input(source, image[None].transpose(0, 2, 3, 1)))
        it.invoke()
        for key, index in found.items():
            collected[key].append(it.get_tensor(index).copy())
    out = {}
    for key, parts in collected.items():
        value = np.concatenate(parts)
        out[key] = value.transpose(0, 3, 1, 2) if value.ndim == 4 else value
    return out


def torch_tensors(program, images: np.ndarray, keys: list[str], *,
                  float64: bool = False) -> dict[str, np.ndarray]:
    """{key: int8 values} of the fake-quant program (a converted PT2E GraphModule):
    the outputs of its quantize_per_tensor nodes, in graph order, which is the QDQ
    ONNX model's order of `keys` (the ONNX exporter renames some values: add_1 ->
    add_311); a program with another number of quantize nodes raises ValueError.

    `float64=True` runs the program's float arithmetic in float64 (quantize and
    dequantize computed by hand, everything between them on float64 tensors, on a
    copy of the program): with 29 more bits in every sum, the program computes the
    integer reference (one exact requantization per op) except near true ties."""
    import copy

    import torch
    from torch.fx import Interpreter

    qd = torch.ops.quantized_decomposed
    quantize = qd.quantize_per_tensor.default
    found: list[torch.Tensor] = []

    def exact(target, args):
        """quantize / dequantize in float64 (the decomposed ops insist on float32)."""
        if target not in (quantize, qd.dequantize_per_tensor.default,
                          qd.dequantize_per_channel.default):
            return None
        x, scale, zero = args[0], args[1], args[2]
        if target == quantize:
            low, high, dtype = args[3], args[4], args[5]
            return torch.clamp(torch.round(x.double() / float(scale)) + zero, low, high).to(dtype)
        if target == qd.dequantize_per_tensor.default:
            return (x.double() - zero) * float(scale)
        if target == qd.dequantize_per_channel.default:
            shape = [-1 if d == args[3] else 1 for d in range(x.dim())]
            return (x.double() - zero.double().view(shape)) * scale.double().view(shape)
        return None

    class Recorder(Interpreter):
        def run_node(self, node):
            result = None
            if float64 and node.op == "call_function":
                args, _ = self.fetch_args_kwargs_from_env(node)
                result = exact(node.target, args)
            if result is None:
                result = super().run_node(node)
            if node.op == "call_function" and node.target == quantize:
                found.append(result)
            return result

    with torch.no_grad():
        model = copy.deepcopy(program).double() if float64 else program
        Recorder(model).run(torch.from_numpy(np.asarray(images, np.float32)))
    if len(found) != len(keys):
        raise ValueError(f"the program quantizes {len(found)} tensors, the ONNX model "
                         f"{len(keys)}")
    return {k: v.numpy().astype(np.int8) for k, v in zip(keys, found, strict=True)}
