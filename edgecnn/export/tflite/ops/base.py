"""The ONNX op records, the context a lowering function sees, and the driver.

One record per ONNX op type (`OnnxOp`), made by decorating its lowering
function (named after the op: `lower_conv` for Conv) with `register`. The
record also holds the op's layout rule for the NHWC pass
(`edgecnn.export.tflite.layouts`) and how int8 quantization passes through it
in QDQ graphs whose Q/DQ leave one side bare (`propagates`: "forward", the
output may take the input's parameters, or "both"). A lowering receives a
`Lowering` context and the node's attributes as keyword arguments, and emits
TFLite ops through the context; attributes it does not declare are reported
as unsupported. What the emitted builtins are is in `builtins.py`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.export.tflite.graph import Graph, Op, Tensor
from edgecnn.registry import Registry

LayoutRule = Callable[[Graph, "Op"], list["Op"]]
PROPAGATION = (None, "forward", "both")


@dataclass(frozen=True)
class OnnxOp:
    """What the converter knows about one ONNX op type (see the module doc)."""

    name: str
    lower: Callable[..., None]
    layout: LayoutRule | None = None
    propagates: str | None = None


LOWERINGS: Registry[OnnxOp] = Registry("ONNX op")


def register(op_type: str, *, layout: LayoutRule | None = None, propagates: str | None = None,
             ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator: the record of ONNX op `op_type`, with the decorated function as its lowering."""
    if propagates not in PROPAGATION:
        raise ValueError(f"{op_type}: propagates must be one of {PROPAGATION}")

    def decorator(fn: Callable[..., None]) -> Callable[..., None]:
        LOWERINGS.add(op_type, OnnxOp(op_type, fn, layout, propagates))
        return fn

    return decorator


class Lowering:
    """One ONNX node being lowered: its tensors, and helpers to emit TFLite ops."""

    def __init__(self, graph: Graph, op: Op) -> None:
        self.graph = graph
        self.op = op
        self.emitted: list[Op] = []

    def input(self, index: int) -> Tensor | None:
        if index >= len(self.op.inputs) or not self.op.inputs[index]:
            return None
        return self.graph.tensor(self.op.inputs[index])

    def const(self, index: int) -> np.ndarray | None:
        tensor = self.input(index)
        return None if tensor is None else tensor.data

    def output(self, index: int = 0) -> Tensor:
        return self.graph.tensor(self.op.outputs[index])

    def fail(self, message: str) -> EdgecnnError:
        return EdgecnnError(f"{self.op.describe()}: {message}")

    def emit(self, builtin: str, inputs: list[str], outputs: list[str], **options) -> Op:
        """Append a TFLite op; `options` are its builtin options in snake_case."""
        op = Op(builtin, list(inputs), list(outputs), options, name=self.op.name, domain="tflite")
        self.emitted.append(op)
        return op

    def int32(self, hint: str, values) -> str:
        return self.graph.add_const(f"{self.op.name}_{hint}", np.asarray(values, np.int32))

    def like(self, hint: str, tensor: Tensor, shape: tuple[int, ...]) -> str:
        """A new activation with `tensor`'s dtype and quantization and a new shape."""
        return self.graph.add_tensor(f"{tensor.name}_{hint}", shape, tensor.dtype,
                                     quant=tensor.quant)

    def operand(self, index: int) -> str:
        """An input of an elementwise op, as a float32 constant when it is a float constant."""
        tensor = self.input(index)
        if tensor.is_const and tensor.quant is None and tensor.dtype != np.float32:
            return self.graph.add_const(f"{tensor.name}_f32", tensor.data.astype(np.float32))
        return tensor.name


def _check_attributes(fn: Callable[..., None], op: Op) -> None:
    params = inspect.signature(fn).parameters
    known = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    for name in op.attrs:
        if name not in known:
            raise EdgecnnError(f"{op.describe()}: attribute {name!r} is not supported; "
                               f"{op.type} supports {', '.join(known) or 'no attributes'}")


def lower_graph(graph: Graph) -> None:
    """Replace every ONNX op by the TFLite ops its lowering emits (in place). Raises
    EdgecnnError naming the node for an op or attribute with no lowering, and for any
    exception a lowering raises (its type and first line kept)."""
    lowered: list[Op] = []
    for op in graph.ops:
        if op.domain == "tflite":
            lowered.append(op)
            continue
        if op.type not in LOWERINGS:
            raise EdgecnnError(f"{op.describe()}: op type {op.type!r} is not supported; "
                               f"supported ONNX ops: {', '.join(LOWERINGS)}")
        fn = LOWERINGS.get(op.type).lower
        _check_attributes(fn, op)
        ctx = Lowering(graph, op)
        with op.blamed("lowering"):
            fn(ctx, **op.attrs)
        lowered.extend(ctx.emitted)
    graph.ops = lowered
