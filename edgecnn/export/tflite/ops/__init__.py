"""One lowering per ONNX op, registered in `LOWERINGS`; `lower_graph` applies them."""

from edgecnn.export.tflite.ops import conv, elementwise, linear, norm, pad, pool, shape  # noqa: F401
from edgecnn.export.tflite.ops.base import LOWERINGS, Lowering, lower_graph, register

__all__ = ["LOWERINGS", "Lowering", "lower_graph", "register"]
