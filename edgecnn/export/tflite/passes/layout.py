"""NCHW -> NHWC: every rank-4 activation is stored NHWC, weights OHWI / 1HWC.

The model input becomes NHWC without a TRANSPOSE. Each op's own record names
its layout rule (`edgecnn.export.tflite.layouts`): attributes that name an
axis are remapped; constants broadcast against an NHWC tensor are permuted; a
reshape whose element order differs between NCHW and NHWC (it moves channels
across spatial positions) gets a TRANSPOSE (reshapes in mobile CNNs, after a
global pool, never do).
"""

from __future__ import annotations

from edgecnn.export.tflite.graph import Graph, Op
from edgecnn.export.tflite.layouts import nhwc
from edgecnn.export.tflite.ops.base import LOWERINGS


def to_nhwc(graph: Graph) -> None:
    """Store rank-4 activations NHWC and rewrite what depends on the layout (in place)."""
    for tensor in graph.tensors.values():
        if not tensor.is_const and tensor.rank == 4:
            tensor.shape = nhwc(tensor.shape)
    ops: list[Op] = []
    for op in graph.ops:
        rule = LOWERINGS.get(op.type).layout if op.domain == "onnx" and op.type in LOWERINGS \
            else None
        if rule is None:
            ops.append(op)
            continue
        with op.blamed("layout rule"):
            ops.extend(rule(graph, op))
    graph.ops = ops
