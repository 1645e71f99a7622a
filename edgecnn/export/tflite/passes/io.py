"""The model's inputs and outputs: float or uint8 I/O around an int8 graph, and their names."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Graph, Op, Quant


def float_io(graph: Graph) -> None:
    """In place: one QUANTIZE per int8 model input and one DEQUANTIZE per int8 output,
    so the model takes and returns float32."""
    for i, name in enumerate(graph.inputs):
        tensor = graph.tensor(name)
        if tensor.quant is not None:
            floating = graph.add_tensor(f"{name}_float", tensor.shape, np.float32)
            graph.ops.insert(0, Op("QUANTIZE", [floating], [name], name=f"{name}_quantize",
                                   domain="tflite"))
            graph.inputs[i] = floating
    for i, name in enumerate(graph.outputs):
        tensor = graph.tensor(name)
        if tensor.quant is not None:
            floating = graph.add_tensor(f"{name}_float", tensor.shape, np.float32)
            graph.ops.append(Op("DEQUANTIZE", [name], [floating], name=f"{name}_dequantize",
                                domain="tflite"))
            graph.outputs[i] = floating


def uint8_io(graph: Graph) -> None:
    """In place: int8 model inputs and outputs become uint8 with the same scale and the zero
    point moved by +128 (the same real values), through one QUANTIZE each, as TFLiteConverter
    does for `inference_input_type=tf.uint8` (camera pipelines, Edge TPU-style runtimes)."""
    for i, name in enumerate(graph.inputs):
        tensor = graph.tensor(name)
        if tensor.quant is not None and tensor.dtype == np.int8:
            shifted = Quant(tensor.quant.scale, tensor.quant.zero_point + 128)
            raw = graph.add_tensor(f"{name}_uint8", tensor.shape, np.uint8, quant=shifted)
            graph.ops.insert(0, Op("QUANTIZE", [raw], [name], name=f"{name}_quantize",
                                   domain="tflite"))
            graph.inputs[i] = raw
    for i, name in enumerate(graph.outputs):
        tensor = graph.tensor(name)
        if tensor.quant is not None and tensor.dtype == np.int8:
            shifted = Quant(tensor.quant.scale, tensor.quant.zero_point + 128)
            raw = graph.add_tensor(f"{name}_uint8", tensor.shape, np.uint8, quant=shifted)
            graph.ops.append(Op("QUANTIZE", [name], [raw], name=f"{name}_requantize",
                                domain="tflite"))
            graph.outputs[i] = raw


def _rename(graph: Graph, old: str, new: str) -> None:
    tensor = graph.tensors.pop(old)
    tensor.name = new
    graph.tensors[new] = tensor
    for op in graph.ops:
        op.inputs = [new if n == old else n for n in op.inputs]
        op.outputs = [new if n == old else n for n in op.outputs]
    graph.inputs = [new if n == old else n for n in graph.inputs]
    graph.outputs = [new if n == old else n for n in graph.outputs]


def name_io(graph: Graph) -> None:
    """In place: model inputs and outputs take their ONNX names (the signature keys);
    a tensor already holding such a name is renamed out of the way."""
    pairs = [*zip(graph.inputs, graph.input_keys, strict=True),
             *zip(graph.outputs, graph.output_keys, strict=True)]
    for name, key in pairs:
        if name == key or (name in graph.inputs and name in graph.outputs):
            continue
        if key in graph.tensors:
            _rename(graph, key, graph.unique_name(f"{key}_inner"))
        _rename(graph, name, key)
