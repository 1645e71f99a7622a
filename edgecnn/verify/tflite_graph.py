"""TFLite side of `inspect`: every intermediate tensor of a .tflite model on LiteRT's
XNNPACK delegate and on its builtin kernels, and each int8 layer run on its own.

The whole model runs with LiteRT's `experimental_preserve_all_tensors`, which
keeps every intermediate tensor readable after `invoke`, on the builtin kernels
and, in LiteRT 2.3, inside the XNNPACK partitions too (checked against a copy of
the file that lists every tensor as a subgraph output: identical integers).
The own error of each layer comes from a rewritten file (flatbuffer object API;
the arithmetic is untouched) holding a private copy of every layer's operators
that reads new subgraph inputs: the real kernels run each layer on the
reference's values, quantized. That is exact on either kernel set and for every
op, where emulating the kernels (`verify.builtin_int8`) covers five ops
and only the builtin arithmetic.

Needs ai-edge-litert (interpreter and schema) and flatbuffers; no torch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.qmath import affine_quantize
from edgecnn.verify.taps import ACTIVATIONS, WEIGHTED, Tap, kind, last_kind, main_op

KERNELS = {"xnnpack": "AUTO", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}
ALIGNMENT = 16


def _schema():
    try:
        import flatbuffers  # noqa: F401
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise EdgecnnError("inspect on .tflite files needs ai-edge-litert and flatbuffers "
                           "(pip install 'edgecnn[tflite]')") from None
    return schema


def _parse(path: Path):
    schema = _schema()
    data = path.read_bytes()
    try:
        if not schema.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError("no TFL3 identifier")
        return schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    except Exception as exc:  # noqa: BLE001 - flatbuffers raises anything on bad bytes
        raise EdgecnnError(f"{path}: not a readable TFLite model ({exc})") from None


def _pack(model) -> bytes:
    """Serialize a ModelT with every buffer's data aligned as the converter aligns it."""
    import flatbuffers

    schema = _schema()

    class Aligned(schema.BufferT):
        def Pack(self, builder):  # noqa: N802 (object API name)
            data = None
            if self.data is not None and len(self.data):
                raw = np.asarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(raw), ALIGNMENT)
                builder.head -= len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            return schema.BufferEnd(builder)

    for buffer in model.buffers or []:
        buffer.__class__ = Aligned
    model.signatureDefs = []
    size = sum(len(b.data) for b in model.buffers or [] if b.data is not None)
    builder = flatbuffers.Builder(size + 1024 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _interpreter(data: bytes, kernels: str, threads: int | None, path: Path,
                 preserve_all_tensors: bool = False):
    """The runtime backend's LiteRT interpreter on `kernels` ("xnnpack" or "builtin")."""
    try:
        from edgecnn.runtime.backends.tflite import interpreter
    except ImportError:
        raise EdgecnnError("inspect on .tflite files needs ai-edge-litert "
                           "(pip install ai-edge-litert)") from None
    return interpreter(data, threads=threads or 1, delegate=kernels == "xnnpack",
                       preserve_all_tensors=preserve_all_tensors,
                       name=f"{path} (LiteRT {kernels} kernels, intermediate tensors exposed)")


class _Graph:
    """The first subgraph of a .tflite file: tensors, op names, producers."""

    def __init__(self, path: Path) -> None:
        schema = _schema()
        self.path = path
        self.model = _parse(path)
        self.subgraph = self.model.subgraphs[0]
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.op_names = [names[max(c.builtinCode, c.deprecatedBuiltinCode)]
                         for c in self.model.operatorCodes]
        self.tensors = self.subgraph.tensors
        self.producer = {int(o): i for i, op in enumerate(self.subgraph.operators)
                         for o in op.outputs}
        self.input = int(self.subgraph.inputs[0])

    def name(self, index: int) -> str:
        name = self.tensors[index].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def op_name(self, op_index: int) -> str:
        return self.op_names[self.subgraph.operators[op_index].opcodeIndex]

    def is_constant(self, index: int) -> bool:
        buffer = self.model.buffers[self.tensors[index].buffer]
        return buffer.data is not None and len(buffer.data) > 0

    def feed(self, interpreter, x: np.ndarray) -> None:
        """Set the model input from float NHWC `x` (quantized when the input is integer)."""
        detail = interpreter.get_input_details()[0]
        if np.issubdtype(detail["dtype"], np.integer):
            x = affine_quantize(x, *detail["quantization"], detail["dtype"])
        interpreter.set_tensor(detail["index"], np.ascontiguousarray(x, detail["dtype"]))


def _per_image(interpreter, feed, count: int, indices: list[int]) -> list[np.ndarray]:
    """Invoke once per image; `feed(i)` sets image i's inputs; the tensors at `indices`."""
    rows: list[list[np.ndarray]] = [[] for _ in indices]
    for i in range(count):
        feed(i)
        interpreter.invoke()
        for row, index in zip(rows, indices, strict=True):
            row.append(interpreter.get_tensor(index).copy())
    return [np.concatenate(r) for r in rows]


class TfliteReference(_Graph):
    """An fp32 .tflite model with every float op output readable (NHWC), on XNNPACK."""

    layout = "NHWC"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__(path)
        schema = _schema()
        self.indices = [self.input] + [int(o) for op in self.subgraph.operators for o in op.outputs
                                       if self.tensors[o].type == schema.TensorType.FLOAT32]
        self.names = [self.name(i) for i in self.indices]
        consumers: dict[int, list[str]] = {}
        for k, op in enumerate(self.subgraph.operators):
            for i in op.inputs:
                consumers.setdefault(int(i), []).append(self.op_name(k))
        self.layer_outputs = [self.name(i) for i in self.indices
                              if not consumers.get(i) or any(o not in ACTIVATIONS
                                                             for o in consumers[i])]
        self.labels, self.kinds = {}, {self.names[0]: "input"}
        for index in self.indices[1:]:
            k = self.producer[index]
            while self.op_name(k) in ACTIVATIONS and int(self.subgraph.operators[k].inputs[0]) \
                    in self.producer:
                k = self.producer[int(self.subgraph.operators[k].inputs[0])]
            weights = [self.name(int(i)) for i in self.subgraph.operators[k].inputs[1:]
                       if i >= 0 and self.is_constant(int(i)) and len(self.tensors[i].shape) >= 2
                       and kind(self.op_name(k)) in WEIGHTED]
            self.labels[self.name(index)] = (weights[0].removesuffix("_nhwc").removesuffix(
                ".weight") if weights else self.name(index))
            self.kinds[self.name(index)] = kind(self.op_name(k))
        self._it = _interpreter(path.read_bytes(), "xnnpack", threads, path,
                                preserve_all_tensors=True)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = _per_image(self._it, lambda i: self.feed(self._it, x[i:i + 1]), len(x),
                            self.indices[1:])
        return {self.names[0]: x, **dict(zip(self.names[1:], values, strict=True))}


class TfliteCandidate(_Graph):
    """A full-int8 .tflite (edgecnn's or another converter's) read tap by tap on both
    kernel sets of LiteRT."""

    layout = "NHWC"
    kernels = tuple(KERNELS)

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__(path)
        schema = _schema()
        self.threads = threads
        integer = {schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8,
                   schema.TensorType.INT16: np.int16}
        indices = [self.input] + [int(o) for op in self.subgraph.operators for o in op.outputs]
        self._index: dict[str, int] = {}
        self.taps: list[Tap] = []
        for index in dict.fromkeys(indices):
            tensor = self.tensors[index]
            q = tensor.quantization
            if tensor.type not in integer or q is None or q.scale is None or len(q.scale) != 1:
                continue
            if self._requantized(index):
                continue
            name = self.name(index)
            self._index[name] = index
            self.taps.append(Tap(name, name, "", float(q.scale[0]), int(q.zeroPoint[0]),
                                 np.dtype(integer[tensor.type])))
        self._layer_ops: dict[str, list[int]] = {}
        self.set_boundaries({t.name for t in self.taps})
        self._full = {k: _interpreter(path.read_bytes(), k, threads, path,
                                      preserve_all_tensors=True) for k in self.kernels}
        self._layerwise: dict[str, tuple] = {}

    def _requantized(self, index: int) -> bool:
        """The tensor is another tap's values at another precision: a QUANTIZE of an integer
        tensor, or of a DEQUANTIZE's output (int8 <-> int16 at a 16x8 layer's edges). It is
        no layer of its own: the layer that reads it reads the tap behind it."""
        op = self.producer.get(index)
        if op is None or self.op_name(op) != "QUANTIZE":
            return False
        source = int(self.subgraph.operators[op].inputs[0])
        if self.tensors[source].quantization is not None and \
                self.tensors[source].quantization.scale is not None:
            return True
        before = self.producer.get(source)
        return before is not None and self.op_name(before) == "DEQUANTIZE"

    def set_boundaries(self, names: set[str]) -> None:
        """Recompute each tap's layer with the taps in `names` as its boundaries."""
        by_index = {self._index[n]: n for n in names if n in self._index}
        updated = []
        for tap in self.taps:
            index = self._index[tap.name]
            ops, reads, reads_input = set(), [], False
            stack = [self.producer[index]] if index in self.producer else []
            while stack:
                k = stack.pop()
                if k in ops:
                    continue
                ops.add(k)
                for i in map(int, self.subgraph.operators[k].inputs):
                    if i < 0 or self.is_constant(i):
                        continue
                    if i in by_index:
                        reads.append(by_index[i])
                    elif i == self.input:
                        reads_input = True
                    elif i in self.producer:
                        stack.append(self.producer[i])
            order = sorted(ops)
            self._layer_ops[tap.name] = order
            names = [self.op_name(k) for k in order]
            updated.append(Tap(tap.name, tap.tensor, main_op(names) if order else "input",
                               tap.scale, tap.zero_point, tap.dtype, tuple(dict.fromkeys(reads)),
                               reads_input, len(order), kind=last_kind(names)))
        self.taps = updated
        self._layerwise = {}

    def run(self, x: np.ndarray, kernels: str) -> dict[str, np.ndarray]:
        it = self._full[kernels]
        indices = [self._index[t.name] for t in self.taps]
        values = _per_image(it, lambda i: self.feed(it, x[i:i + 1]), len(x), indices)
        return {t.name: v for t, v in zip(self.taps, values, strict=True)}

    def run_layers(self, x: np.ndarray, feeds: dict[str, np.ndarray], kernels: str,
                   layers: list[str]) -> dict[str, np.ndarray]:
        """tap name -> raw integers of each layer in `layers` run alone, its input taps
        set to `feeds[name]` (raw integers) and the model input to `x`."""
        if kernels not in self._layerwise:
            self._layerwise[kernels] = self._build_layerwise(layers, kernels)
        it, outputs, inputs = self._layerwise[kernels]

        def feed(i: int) -> None:
            self.feed(it, x[i:i + 1])
            for index, name in inputs.items():
                it.set_tensor(index, np.ascontiguousarray(feeds[name][i:i + 1]))

        values = _per_image(it, feed, len(x), [index for index, _ in outputs])
        return {name: v for (_, name), v in zip(outputs, values, strict=True)}

    def _build_layerwise(self, layers: list[str], kernels: str):
        model = copy.copy(self.model)
        subgraph = copy.copy(self.subgraph)
        tensors, operators = list(self.tensors), []
        inputs: dict[int, str] = {}
        outputs: list[tuple[int, str]] = []
        taps = {t.name: t for t in self.taps}

        def clone(index: int, suffix: str) -> int:
            tensor = copy.copy(self.tensors[index])
            tensor.name = f"{self.name(index)}{suffix}"
            tensors.append(tensor)
            return len(tensors) - 1

        for n, name in enumerate(layers):
            suffix, renamed = f"@{n}", {}
            boundary = {self._index[b]: b for b in taps[name].inputs}
            for k in self._layer_ops[name]:
                op = copy.copy(self.subgraph.operators[k])
                new_inputs = []
                for i in map(int, op.inputs):
                    if i in boundary and i not in renamed:
                        renamed[i] = clone(i, suffix)
                        inputs[renamed[i]] = boundary[i]
                    new_inputs.append(renamed.get(i, i))
                op.inputs = new_inputs
                outs = []
                for o in map(int, op.outputs):
                    renamed[o] = clone(o, suffix)
                    outs.append(renamed[o])
                op.outputs = outs
                operators.append(op)
            outputs.append((renamed[self._index[name]], name))
        subgraph.tensors, subgraph.operators = tensors, operators
        subgraph.inputs = [self.input, *inputs]
        subgraph.outputs = [index for index, _ in outputs]
        model.subgraphs = [subgraph]
        return _interpreter(_pack(model), kernels, self.threads, self.path), outputs, inputs
