"""One lowering per ONNX op, registered in `LOWERINGS`; `lower_graph` applies them."""

from edgecnn.export.tflite.ops import (  # noqa: F401
    conv,
    elementwise,
    linear,
    norm,
    pad,
    pool,
    resize,
    shape,
)
from edgecnn.export.tflite.ops.base import LOWERINGS, Lowering, lower_graph, register

__all__ = ["LOWERINGS", "Lowering", "lower_graph", "register"]
