"""ONNX side of `inspect`: every intermediate tensor of an fp32 model and of a QDQ model,
read from onnxruntime by adding graph outputs, and each QDQ layer run on its own.

Needs the `onnx` package (to edit the graph) and onnxruntime; no torch.

- fp32 reference: every float node output becomes a graph output (onnxruntime
  may then skip a Conv+Relu fusion; float rounding only).
- QDQ candidate: each activation QuantizeLinear's integer output becomes a graph
  output, so onnxruntime still fuses DequantizeLinear -> op -> QuantizeLinear into
  its int8 kernels as in the shipped file (a DequantizeLinear output would block it).
- own error: a second model holds a private copy of every layer whose inputs are
  new graph inputs (the integers of the taps it reads), so one call runs every layer
  on the reference's values, quantized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.verify.taps import ACTIVATIONS, WEIGHTED, Tap, kind, last_kind, main_op

_INT_TYPES = {2: np.uint8, 3: np.int8, 5: np.int16}  # onnx TensorProto element types


def _onnx():
    try:
        import onnx
    except ImportError:
        raise EdgecnnError("inspect on .onnx files needs the onnx package "
                           "(pip install onnx)") from None
    return onnx


def load(path: Path):
    onnx = _onnx()
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own errors
        raise EdgecnnError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


def _session(model, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _labels(model, constants: dict[str, np.ndarray]) -> tuple[dict[str, str], dict[str, str]]:
    """tensor -> layer name: the weight initializer of the op behind it ("block.conv"
    from "block.conv.weight"), looking through activations (not through pads and
    reshapes); and tensor -> the kind of that op (`taps.kind`)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    labels, kinds = {}, {}
    for tensor in producer:
        node = producer[tensor]
        while node.op_type in ACTIVATIONS and node.input and node.input[0] in producer:
            node = producer[node.input[0]]
        weights = [i for i in node.input[1:] if i in constants and constants[i].ndim >= 2
                   and kind(node.op_type) in WEIGHTED]
        labels[tensor] = weights[0].removesuffix(".weight") if weights else tensor
        kinds[tensor] = kind(node.op_type)
    return labels, kinds


class OnnxReference:
    """An fp32 ONNX model with every float intermediate tensor readable, in NCHW."""

    layout = "NCHW"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        onnx = _onnx()
        model = load(path)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - inference is best effort
            inferred = model
        types = {v.name: v.type.tensor_type.elem_type for v in
                 [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
        constants = _constants(model)
        self.input = model.graph.input[0].name
        outputs = {o.name for o in model.graph.output}
        self.names = [self.input]
        for node in model.graph.node:
            for out in node.output:
                if node.op_type != "Constant" and types.get(out) == onnx.TensorProto.FLOAT:
                    self.names.append(out)
                    if out not in outputs:
                        model.graph.output.append(onnx.helper.make_tensor_value_info(
                            out, onnx.TensorProto.FLOAT, None))
        self.labels, self.kinds = _labels(model, constants)
        self.kinds[self.input] = "input"
        consumers: dict[str, list[str]] = {}
        for node in model.graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node.op_type)
        #: tensors a layer hands on (not only to an activation), in graph order
        self.layer_outputs = [n for n in self.names
                              if not consumers.get(n) or any(op not in ACTIVATIONS
                                                             for op in consumers[n])]
        self._session = _session(model, threads)
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(None, {self.input: x.astype(np.float32)})
        result = dict(zip(self._outputs, values, strict=True))
        result[self.input] = x
        return {n: result[n] for n in self.names if n in result}


class OnnxCandidate:
    """A QDQ ONNX model (edgecnn's, onnxruntime.quantization's, ...) read tap by tap."""

    layout = "NCHW"
    kernels = ("onnxruntime",)

    def __init__(self, path: Path, threads: int | None = None) -> None:
        onnx = _onnx()
        self.path, self.threads = path, threads
        self.model = load(path)
        graph = self.model.graph
        self.constants = _constants(self.model)
        self.input = graph.input[0].name
        self.producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
        self.taps: list[Tap] = []
        for node in graph.node:
            if node.op_type != "QuantizeLinear" or node.input[0] in self.constants:
                continue
            source = self.producer.get(node.input[0])
            if source is not None and graph.node[source].op_type == "DequantizeLinear":
                continue  # requantized values of another tap (int8 <-> int16, 16x8 edges)
            scale = self.constants.get(node.input[1])
            zero = self.constants.get(node.input[2]) if len(node.input) > 2 else None
            if scale is None or scale.size != 1:
                continue  # per-axis activations: not a plain affine tensor
            dtype = np.dtype(zero.dtype if zero is not None else np.uint8)
            aliases = tuple(o for n in graph.node if n.op_type == "DequantizeLinear"
                            and n.input[0] == node.output[0] for o in n.output)
            self.taps.append(Tap(node.input[0], node.output[0], "", float(scale.reshape(-1)[0]),
                                 int(zero.reshape(-1)[0]) if zero is not None else 0, dtype,
                                 aliases=aliases))
        self._full = None
        self._layerwise = None
        self._layer_nodes: dict[str, list[int]] = {}
        self.set_boundaries({t.name for t in self.taps})
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for tap in self.taps:
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                tap.tensor, _elem_type(tap.dtype), None))
        self._full = _session(model, threads)

    def set_boundaries(self, names: set[str]) -> None:
        """Recompute each tap's layer with the taps in `names` as its boundaries."""
        graph = self.model.graph
        by_q = {t.tensor: t for t in self.taps if t.name in names}
        inputs = {i.name for i in graph.input}
        updated = []
        for tap in self.taps:
            nodes, reads, reads_input = set(), [], False
            stack = [self.producer[tap.tensor]]
            while stack:
                index = stack.pop()
                if index in nodes:
                    continue
                nodes.add(index)
                for name in graph.node[index].input:
                    if not name or name in self.constants:
                        continue
                    if name in inputs:
                        reads_input = True
                    elif name in by_q:
                        reads.append(by_q[name].name)
                    elif name in self.producer:
                        stack.append(self.producer[name])
            order = sorted(nodes)
            self._layer_nodes[tap.name] = order
            ops = [graph.node[i].op_type for i in order]
            updated.append(Tap(tap.name, tap.tensor, main_op(ops), tap.scale, tap.zero_point,
                               tap.dtype, tuple(dict.fromkeys(reads)), reads_input, len(order),
                               tap.aliases, last_kind(ops)))
        self.taps = updated
        self._layerwise = None

    def run(self, x: np.ndarray, kernels: str) -> dict[str, np.ndarray]:
        """tap name -> raw integers of the whole model on float input `x` (NCHW)."""
        values = self._full.run([t.tensor for t in self.taps], {self.input: x})
        return {t.name: v for t, v in zip(self.taps, values, strict=True)}

    def run_layers(self, x: np.ndarray, feeds: dict[str, np.ndarray], kernels: str,
                   layers: list[str]) -> dict[str, np.ndarray]:
        """tap name -> raw integers of each layer in `layers` run alone, its input taps
        set to `feeds[name]` (raw integers) and the model input to `x`."""
        if self._layerwise is None:
            self._layerwise = self._build_layerwise(layers)
        session, outputs, inputs = self._layerwise
        feed = {name: feeds[tap] for name, tap in inputs.items()}
        if self.input in {i.name for i in session.get_inputs()}:
            feed[self.input] = x
        values = session.run([name for name, _ in outputs], feed)
        return {tap: v for (_, tap), v in zip(outputs, values, strict=True)}

    def _build_layerwise(self, layers: list[str]):
        onnx = _onnx()
        from onnx import helper, numpy_helper

        graph = self.model.graph
        taps = {t.name: t for t in self.taps}
        boundary = {taps[n].tensor: n for n in taps}
        nodes, inputs, outputs = [], {}, []
        for i, name in enumerate(layers):
            tap, suffix = taps[name], f"@{i}"
            internal = {o for j in self._layer_nodes[name] for o in graph.node[j].output}
            for j in self._layer_nodes[name]:
                node = onnx.NodeProto()
                node.CopyFrom(graph.node[j])
                node.name = f"{node.name}{suffix}"
                for k, value in enumerate(node.input):
                    if value in internal:
                        node.input[k] = value + suffix
                    elif value in boundary and boundary[value] in tap.inputs:
                        node.input[k] = value + suffix
                        inputs[value + suffix] = boundary[value]
                for k, value in enumerate(node.output):
                    node.output[k] = value + suffix
                nodes.append(node)
            outputs.append((tap.tensor + suffix, name))
        graph_inputs = [graph.input[0]] + [
            helper.make_tensor_value_info(n, _elem_type(taps[t].dtype), None)
            for n, t in inputs.items()]
        used = {i for node in nodes for i in node.input}
        graph_inputs = [g for g in graph_inputs if g.name in used]
        initializers = list(graph.initializer)
        known = {i.name for i in initializers}
        initializers += [numpy_helper.from_array(value, name)  # Constant nodes' values
                         for name, value in self.constants.items()
                         if name in used and name not in known]
        new = helper.make_graph(nodes, "layerwise", graph_inputs,
                                [helper.make_tensor_value_info(n, _elem_type(taps[t].dtype),
                                                               None) for n, t in outputs],
                                initializers)
        model = helper.make_model(new, opset_imports=self.model.opset_import,
                                  ir_version=self.model.ir_version)
        return _session(model, self.threads), outputs, inputs


def _elem_type(dtype: np.dtype) -> int:
    return {np.dtype(v): k for k, v in _INT_TYPES.items()}[np.dtype(dtype)]
