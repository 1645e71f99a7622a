"""Layout rules: how one ONNX op is rewritten when its rank-4 tensors become NHWC.

Each rule takes the graph and an ONNX op whose activations already have NHWC
shapes, and returns the ops that replace it (usually the op itself, with
attributes remapped and constants permuted). The op records in `ops/` name
their rule (`register(..., layout=...)`); the `to_nhwc` pass applies them. Ops
without a rule (pools, activations) need nothing: their lowerings read NHWC
shapes.
"""

from __future__ import annotations

import numpy as np

from edgecnn.errors import EdgecnnError
from edgecnn.export.tflite.graph import Graph, Op, Quant

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}  # NCHW axis -> NHWC axis


def nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[i] for i in TO_NHWC)


def nchw(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[i] for i in TO_NCHW)


def _same_memory(nhwc_shape: tuple[int, ...]) -> bool:
    """NCHW and NHWC hold elements in the same order when C == 1 or H*W == 1."""
    _, h, w, c = nhwc_shape
    return c == 1 or h * w == 1


def _permuted_const(graph: Graph, name: str, data: np.ndarray, perm: tuple[int, ...],
                    axis_map: dict[int, int] | None = None) -> str:
    quant = graph.tensor(name).quant
    if quant is not None and quant.axis is not None:
        quant = Quant(quant.scale, quant.zero_point, (axis_map or {}).get(quant.axis, quant.axis))
    return graph.add_const(f"{name}_nhwc", data.transpose(perm), quant=quant)


def conv_layout(graph: Graph, op: Op) -> list[Op]:
    weights = graph.const(op.inputs[1])
    if weights is None or weights.ndim != 4:
        return [op]  # lowering reports non-constant or non-2-D weights
    group, c_in = op.attrs.get("group", 1), graph.tensor(op.inputs[0]).shape[3]
    quant = graph.tensor(op.inputs[1]).quant
    if quant is not None and quant.axis not in (None, 0):
        raise EdgecnnError(f"{op.describe()}: weights quantized along axis {quant.axis}; "
                           f"TFLite needs per-output-channel (axis 0)")
    if group > 1 and group == c_in:  # depthwise: OIHW (I == 1) -> 1HWC
        op.inputs[1] = _permuted_const(graph, op.inputs[1], weights, (1, 2, 3, 0), {0: 3})
    else:  # OIHW -> OHWI
        op.inputs[1] = _permuted_const(graph, op.inputs[1], weights, TO_NHWC, {0: 0})
    return [op]


#: the ONNX default of `axis` per op type (-1 for the others)
DEFAULT_AXIS = {"Concat": 1, "Split": 0}


def conv_transpose_layout(graph: Graph, op: Op) -> list[Op]:
    """ConvTranspose weights [Cin, Cout, kH, kW] (quantized along axis 1) -> TFLite's
    TRANSPOSE_CONV filter [Cout, kH, kW, Cin] (along axis 0)."""
    weights = graph.const(op.inputs[1])
    if weights is None or weights.ndim != 4 or op.attrs.get("group", 1) != 1:
        return [op]  # lowering reports
    quant = graph.tensor(op.inputs[1]).quant
    if quant is not None and quant.axis not in (None, 1):
        raise EdgecnnError(f"{op.describe()}: weights quantized along axis {quant.axis}; "
                           f"TFLite needs per-output-channel (axis 1 of ConvTranspose)")
    op.inputs[1] = _permuted_const(graph, op.inputs[1], weights, (1, 2, 3, 0), {1: 0})
    return [op]


def axis_layout(graph: Graph, op: Op) -> list[Op]:
    """Concat / Split / Softmax: remap the `axis` attribute; permute rank-4 constant inputs."""
    if graph.tensor(op.outputs[0]).rank == 4:
        axis = op.attrs.get("axis", DEFAULT_AXIS.get(op.type, -1)) % 4
        op.attrs["axis"] = NHWC_AXIS[axis]
        for i, name in enumerate(op.inputs):
            data = graph.const(name)
            if data is not None and data.ndim == 4:
                op.inputs[i] = _permuted_const(graph, name, data, TO_NHWC)
    return [op]


def softmax_layout(graph: Graph, op: Op) -> list[Op]:
    """Softmax / LogSoftmax of a rank-4 tensor over channels: the NHWC last axis
    (`axis_layout`); over another axis (attention's scores over the keys, [N, heads, L, L])
    in NCHW element order, as a reshape."""
    if graph.tensor(op.outputs[0]).rank == 4 and op.attrs.get("axis", -1) % 4 != 1:
        return _in_nchw_order(graph, op)
    return axis_layout(graph, op)


def reduce_layout(graph: Graph, op: Op) -> list[Op]:
    """ReduceMean & co: axes (attribute or constant input) become an NHWC `axes` attribute."""
    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    axes = op.attrs.get("axes")
    if len(op.inputs) > 1 and op.inputs[1]:
        axes = graph.const(op.inputs[1])
        if axes is None:
            raise EdgecnnError(f"{op.describe()}: axes must be a constant")
        op.inputs = op.inputs[:1]
    axes = list(range(x.rank)) if axes is None or len(axes) == 0 else [a % x.rank for a in axes]
    if x.rank == 4:
        kept = [a for a in range(4) if a not in axes]
        if not op.attrs.get("keepdims", 1) and 1 in kept and len(kept) > 2:
            raise EdgecnnError(f"{op.describe()}: reducing axes {axes} without keepdims "
                               f"leaves channels before space; not supported")
        axes = [NHWC_AXIS[a] for a in axes]
    op.attrs["axes"] = sorted(axes)
    if y.rank == 4 and x.rank != 4:
        raise EdgecnnError(f"{op.describe()}: a reduction producing rank 4 from rank {x.rank}")
    return [op]


def norm_layout(graph: Graph, op: Op) -> list[Op]:
    """LayerNormalization / InstanceNormalization of a rank-4 tensor: the normalized axes
    (`axes`, else LayerNormalization's `axis` to the end, InstanceNormalization's 2 to the
    end) become an NHWC `axes` attribute; scale and bias, broadcast over those axes, are
    expanded to rank 4 (InstanceNormalization's per channel) and permuted."""
    x = graph.tensor(op.inputs[0])
    if x.rank != 4:
        return [op]
    axes = normalized_axes(op, x.rank)
    op.attrs["axes"] = sorted(NHWC_AXIS[a] for a in axes)
    op.attrs.pop("axis", None)
    for i, name in enumerate(op.inputs[1:3], start=1):
        data = graph.const(name) if name else None
        if data is None:
            continue
        shape = [1] * 4
        if op.type == "InstanceNormalization":
            shape[1] = data.size
        else:
            shape[4 - data.ndim:] = data.shape
        op.inputs[i] = _permuted_const(graph, name, data.reshape(shape), TO_NHWC)
    return [op]


def normalized_axes(op: Op, rank: int) -> list[int]:
    """The axes a normalization op averages over: its `axes` (set by `norm_layout` or
    `passes.channels_last`), else LayerNormalization's `axis` .. rank - 1, else (Instance-
    Normalization) 2 .. rank - 1."""
    if "axes" in op.attrs:
        return [int(a) % rank for a in op.attrs["axes"]]
    first = op.attrs.get("axis", -1) % rank if op.type == "LayerNormalization" else 2
    return list(range(first, rank))


def pad_layout(graph: Graph, op: Op) -> list[Op]:
    """Pad of a rank-4 tensor: `pads` (over all axes, or over `axes`) in NHWC order."""
    if graph.tensor(op.inputs[0]).rank != 4:
        return [op]
    pads = graph.const(op.inputs[1]) if len(op.inputs) > 1 else None
    if pads is None:
        raise EdgecnnError(f"{op.describe()}: pads must be a constant")
    axes = graph.const(op.inputs[3]) if len(op.inputs) > 3 and op.inputs[3] else None
    axes = list(range(4)) if axes is None else [int(a) % 4 for a in axes]
    pads = np.asarray(pads, np.int64).reshape(-1)
    full = np.zeros(8, np.int64)
    for i, axis in enumerate(axes):
        full[NHWC_AXIS[axis]], full[NHWC_AXIS[axis] + 4] = pads[i], pads[i + len(axes)]
    op.inputs = [op.inputs[0], graph.add_const(f"{op.inputs[1]}_nhwc", full),
                 *(op.inputs[2:3] if len(op.inputs) > 2 else [])]
    return [op]


def elementwise_layout(graph: Graph, op: Op) -> list[Op]:
    """Constants broadcast against an NHWC output are expanded to rank 4 and permuted."""
    if graph.tensor(op.outputs[0]).rank != 4:
        return [op]
    for i, name in enumerate(op.inputs):
        tensor = graph.tensor(name)
        if tensor.is_const and tensor.data.size > 1:
            data = tensor.data.reshape((1,) * (4 - tensor.rank) + tensor.data.shape)
            op.inputs[i] = _permuted_const(graph, name, data, TO_NHWC)
        elif not tensor.is_const and 0 < tensor.rank < 4:
            raise EdgecnnError(f"{op.describe()}: broadcasting a rank-{tensor.rank} activation "
                               f"{name!r} against a rank-4 tensor is not supported")
    return [op]


def _transpose(graph: Graph, op: Op, src: str, dst: str, perm: tuple[int, ...]) -> Op:
    perm_name = graph.add_const(f"{op.name}_perm", np.asarray(perm, np.int32))
    return Op("TRANSPOSE", [src, perm_name], [dst], name=op.name, domain="tflite")


def _in_nchw_order(graph: Graph, op: Op, inputs: tuple[int, ...] = (0,)) -> list[Op]:
    """`op` reads its rank-4 `inputs` and writes its rank-4 output in NCHW element order:
    a TRANSPOSE before / after each whose NHWC order differs."""
    before: list[Op] = []
    after: list[Op] = []
    for i in inputs:
        x = graph.tensor(op.inputs[i])
        if x.rank == 4 and not x.is_const and not _same_memory(x.shape):
            staged = graph.add_tensor(f"{x.name}_nchw", nchw(x.shape), x.dtype, quant=x.quant)
            before.append(_transpose(graph, op, x.name, staged, TO_NCHW))
            op.inputs[i] = staged
    y = graph.tensor(op.outputs[0])
    if y.rank == 4 and not _same_memory(y.shape):
        staged = graph.add_tensor(f"{y.name}_nchw", nchw(y.shape), y.dtype, quant=y.quant)
        after.append(_transpose(graph, op, staged, y.name, TO_NHWC))
        op.outputs[0] = staged
    return [*before, op, *after]


def reshape_layout(graph: Graph, op: Op) -> list[Op]:
    """A reshape reads and writes NCHW element order; transpose only when the orders differ."""
    return _in_nchw_order(graph, op)


def gather_layout(graph: Graph, op: Op) -> list[Op]:
    """Gather of a constant index. From a rank-4 input along channels (x[:, 0]: the NHWC
    result drops the last axis, the rank-3 [N, H, W] order) or keeping rank 4 (a one-element
    index): `axis` becomes the NHWC axis. Any other rank-4 input or output (qkv[0] of
    attention's [3, N, heads, L, d]) is read / written in NCHW element order, as a reshape."""
    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    axis = op.attrs.get("axis", 0) % x.rank
    if x.rank == 4 and (y.rank == 4 or axis == 1):
        op.attrs["axis"] = NHWC_AXIS[axis]
        return [op]
    return _in_nchw_order(graph, op)


def matmul_layout(graph: Graph, op: Op) -> list[Op]:
    """A product of two rank-4 activations (attention's [N, heads, L, d] @ [N, heads, d, L])
    multiplies the last two NCHW axes: both inputs and the output in NCHW element order."""
    a, b = (graph.tensor(name) for name in op.inputs[:2])
    if a.rank == 4 and b.rank == 4 and not b.is_const:
        return _in_nchw_order(graph, op, (0, 1))
    return [op]


def check_perm(op: Op, perm: list[int], rank: int) -> None:
    """Raise EdgecnnError naming the node when `perm` has not one entry per axis of its
    input: the ONNX checker lets that through (it rejects a repeated or out-of-range axis)."""
    if len(perm) != rank:
        raise EdgecnnError(f"{op.describe()}: perm {perm} has {len(perm)} axes, its input "
                           f"has rank {rank}")


def transpose_layout(graph: Graph, op: Op) -> list[Op]:
    """Transpose of rank-4 tensors, both stored NHWC: perm p over NCHW axes becomes
    q[j] = NHWC_AXIS[p[TO_NHWC[j]]] over the stored axes. Raises EdgecnnError for a perm
    whose length is not the input's rank (`check_perm`)."""
    rank = graph.tensor(op.inputs[0]).rank
    if op.attrs.get("perm") is not None:
        check_perm(op, [int(a) for a in op.attrs["perm"]], rank)
    if rank == 4:
        perm = list(op.attrs.get("perm") or [3, 2, 1, 0])
        op.attrs["perm"] = [NHWC_AXIS[perm[TO_NHWC[j]]] for j in range(4)]
    return [op]


def slice_layout(graph: Graph, op: Op) -> list[Op]:
    """Slice of a rank-4 tensor: its `axes` input (all axes when absent) names NHWC axes."""
    x = graph.tensor(op.inputs[0])
    if x.rank != 4:
        return [op]
    starts = graph.const(op.inputs[1])
    axes = graph.const(op.inputs[3]) if len(op.inputs) > 3 and op.inputs[3] else None
    if starts is None or (len(op.inputs) > 3 and op.inputs[3] and axes is None):
        raise EdgecnnError(f"{op.describe()}: starts and axes must be constants")
    axes = np.arange(len(starts)) if axes is None else np.asarray(axes) % 4
    inputs = list(op.inputs) + [""] * (5 - len(op.inputs))
    inputs[3] = graph.add_const(f"{op.name}_axes_nhwc",
                                np.asarray([NHWC_AXIS[int(a)] for a in axes], np.int64))
    op.inputs = inputs
    return [op]
