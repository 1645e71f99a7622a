"""A small mutable graph IR, and the import of an ONNX model into it.

The IR holds tensors (shape, storage dtype, constant data, int8 quantization)
and ops. An op starts in the ``onnx`` domain (its ONNX type and attributes);
lowering replaces it with ops in the ``tflite`` domain (a builtin operator
name and its options). Passes rewrite a graph in place; `convert` builds a
fresh graph per call, so nothing is shared between conversions.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecnn.errors import EdgecnnError, first_line


@dataclass
class Quant:
    """Affine int8 quantization: real = scale * (q - zero_point), per tensor or per axis."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, np.float32).reshape(-1)
        self.zero_point = np.asarray(self.zero_point, np.int64).reshape(-1)
        if self.zero_point.size == 1 and self.scale.size > 1:
            self.zero_point = np.repeat(self.zero_point, self.scale.size)
        if self.scale.size == 1:
            self.axis = None

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    def same_as(self, other: Quant | None) -> bool:
        return (other is not None and self.axis == other.axis
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        shape = [1] * q.ndim
        if self.axis is not None:
            shape[self.axis] = -1
        scale, zero = self.scale.reshape(shape), self.zero_point.reshape(shape)
        return ((q.astype(np.int64) - zero) * scale.astype(np.float64)).astype(np.float32)

    def __repr__(self) -> str:
        if self.per_tensor:
            return f"Quant({self.scale[0]:.6g}, {int(self.zero_point[0])})"
        return f"Quant(per-axis {self.axis}, {self.scale.size} scales)"


@dataclass
class Tensor:
    """A tensor: `dtype` is its storage type in the .tflite (int8 when quantized)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None
    quant: Quant | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass
class Op:
    """One operation. `name` is the ONNX node name, kept through lowering for errors."""

    type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = "onnx"

    def describe(self) -> str:
        return f"node {self.name!r} ({self.type})"

    @contextlib.contextmanager
    def blamed(self, step: str) -> Iterator[None]:
        """Run one converter step on this op: an exception the step did not foresee
        (IndexError on an odd attribute, ...) becomes one EdgecnnError naming the node,
        the step and the exception's type and first line."""
        try:
            yield
        except EdgecnnError:
            raise
        except Exception as exc:  # noqa: BLE001 - any defect or unforeseen input
            raise EdgecnnError(f"{self.describe()}: the {self.type} {step} failed "
                               f"({type(exc).__name__}: {first_line(exc)})") from exc


class Graph:
    """Tensors by name, ops in topological order, and the model's inputs and outputs.

    `input_keys` / `output_keys` keep the ONNX names of the model's inputs and
    outputs: they become the keys of the `serving_default` signature even when
    passes replace the tensors behind them.

    `notes` collects what a pass did that the user should know (requantizations
    added, scales changed, weights the converter quantized), by kind; `changed`
    names the tensors whose QDQ scale or zero point a pass changed. A pass never
    changes a quantized tensor's parameters without a note.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.input_keys: list[str] = []
        self.output_keys: list[str] = []
        self.metadata: dict[str, str] = {}
        self.notes: dict[str, list[str]] = {}
        self.changed: dict[str, str] = {}
        #: activation -> the (scale, zero point) the QDQ model gives it (set by fold_qdq)
        self.qdq_params: dict[str, Quant] = {}
        #: ids of ops that compute in float although their activations are int8 tensors (a
        #: QDQ model's float layers, `passes.islands.mark_float_layers`)
        self.float_ops: set[int] = set()
        self._counter = itertools.count()

    def note(self, kind: str, name: str, changed: str | None = None) -> None:
        """Record that a pass did `kind` at `name` (a node or tensor); `changed`: the tensor
        whose quantization parameters it changed."""
        self.notes.setdefault(kind, []).append(name)
        if changed is not None:
            self.changed[changed] = kind

    # -- tensors -------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        return self.tensors[name]

    def const(self, name: str) -> np.ndarray | None:
        tensor = self.tensors.get(name) if name else None
        return None if tensor is None else tensor.data

    def unique_name(self, hint: str) -> str:
        name = hint
        while name in self.tensors:
            name = f"{hint}_{next(self._counter)}"
        return name

    def add_tensor(self, hint: str, shape: tuple[int, ...] | list[int], dtype: Any,
                   quant: Quant | None = None, data: np.ndarray | None = None) -> str:
        name = self.unique_name(hint)
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape), np.dtype(dtype),
                                    data=data, quant=quant)
        return name

    def add_const(self, hint: str, data: np.ndarray, quant: Quant | None = None) -> str:
        data = np.ascontiguousarray(data)
        return self.add_tensor(hint, data.shape, data.dtype, quant=quant, data=data)

    # -- structure -----------------------------------------------------------
    def producers(self) -> dict[str, Op]:
        return {out: op for op in self.ops for out in op.outputs if out}

    def consumers(self) -> dict[str, list[Op]]:
        users: dict[str, list[Op]] = {}
        for op in self.ops:
            for name in op.inputs:
                if name:
                    users.setdefault(name, []).append(op)
        return users

    def replace_uses(self, old: str, new: str) -> None:
        """Point every op input and model output that reads `old` at `new`."""
        for op in self.ops:
            op.inputs = [new if name == old else name for name in op.inputs]
        self.outputs = [new if name == old else name for name in self.outputs]

    def prune(self) -> None:
        """Drop ops whose outputs nobody reads, then tensors nothing refers to."""
        live = set(self.outputs)
        kept: list[Op] = []
        for op in reversed(self.ops):
            if any(out in live for out in op.outputs):
                kept.append(op)
                live.update(name for name in (*op.inputs, *op.outputs) if name)
        self.ops = kept[::-1]
        live.update(self.inputs)
        self.tensors = {name: t for name, t in self.tensors.items() if name in live}

    @property
    def quantized(self) -> bool:
        """True when any activation carries int8 quantization (a QDQ model)."""
        return any(t.quant is not None and not t.is_const for t in self.tensors.values())


# -- ONNX import -------------------------------------------------------------

def _attribute(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _static_shape(value: onnx.ValueInfoProto, where: str) -> tuple[int, ...] | None:
    """The shape of `value` with a symbolic batch as 1; raises EdgecnnError for another
    dynamic dimension. `where`: the model, or the model and the node writing `value`."""
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    dims = []
    for i, dim in enumerate(ttype.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif i == 0:
            dims.append(1)  # a symbolic batch dimension is fixed to 1
        else:
            raise EdgecnnError(f"{where}: tensor {value.name!r} has a dynamic dimension {i} "
                               f"({dim.dim_param or '?'}); only the batch may be dynamic")
    return tuple(dims)


def _dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def import_onnx(model: onnx.ModelProto, where: str = "model") -> Graph:
    """Build a Graph from an ONNX model, with static shapes from shape inference.

    `where` names the model (its file) in errors.
    """
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 13:
            raise EdgecnnError(f"{where}: opset {opset.version} is too old; export with "
                               f"opset >= 13 (edgecnn exports 18)")
    model = _batch_of_one(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # onnx raises several types; report them as one
        raise EdgecnnError(f"{where}: ONNX shape inference failed: {exc}") from None
    graph = Graph()
    graph.metadata = {p.key: p.value for p in model.metadata_props}
    onnx_graph = model.graph
    for init in onnx_graph.initializer:
        graph.add_const(init.name, numpy_helper.to_array(init))
    initializers = {init.name for init in onnx_graph.initializer}
    values = list(onnx_graph.input) + list(onnx_graph.value_info) + list(onnx_graph.output)
    writers = {out: f"{where}: node {node.name or node.op_type!r} ({node.op_type})"
               for node in onnx_graph.node for out in node.output}
    for value in values:
        if value.name in graph.tensors or not value.type.HasField("tensor_type"):
            continue
        shape = _static_shape(value, writers.get(value.name, where))  # NonZero: its node
        if shape is not None:
            graph.add_tensor(value.name, shape, _dtype(value.type.tensor_type.elem_type))
    for value in onnx_graph.input:
        if value.name not in initializers:
            if value.name not in graph.tensors:
                raise EdgecnnError(f"{where}: model input {value.name!r} has no static shape")
            graph.inputs.append(value.name)
    graph.outputs = [value.name for value in onnx_graph.output]
    graph.input_keys, graph.output_keys = list(graph.inputs), list(graph.outputs)

    for index, node in enumerate(onnx_graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if node.domain not in ("", "ai.onnx"):
            raise EdgecnnError(f"{where}: node {name!r} ({node.domain}.{node.op_type}) is from "
                               f"a custom domain; only standard ONNX ops are supported")
        attrs = {a.name: _attribute(a) for a in node.attribute}
        if node.op_type == "Constant":
            graph.tensors.pop(node.output[0], None)
            graph.add_const(node.output[0], _constant_value(node, attrs, where))
            continue
        for out in node.output:
            if out and out not in graph.tensors:
                raise EdgecnnError(f"{where}: shape inference gave no static shape for "
                                   f"{out!r}, output of node {name!r} ({node.op_type})")
        graph.ops.append(Op(node.op_type, list(node.input), list(node.output), attrs, name))
    return graph


def _batch_of_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with a symbolic batch dimension of the inputs fixed to 1 and the recorded
    intermediate shapes dropped, so shape inference derives every shape statically."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {init.name for init in fixed.graph.initializer}
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and len(dims) > 0 and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    del fixed.graph.value_info[:]
    return fixed


def _constant_value(node: onnx.NodeProto, attrs: dict[str, Any], where: str) -> np.ndarray:
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    raise EdgecnnError(f"{where}: Constant node {node.name!r} has an unsupported value "
                       f"attribute ({', '.join(attrs)})")
