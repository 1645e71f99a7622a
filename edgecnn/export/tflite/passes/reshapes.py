"""Fold chains of RESHAPE, drop reshapes that change nothing, and keep channel shuffles
in NHWC."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Graph, Op
from edgecnn.export.tflite.layouts import TO_NCHW, TO_NHWC


def fold_reshapes(graph: Graph) -> None:
    """In place: RESHAPE(RESHAPE(x)) becomes one RESHAPE when only the second reads
    the middle tensor; a RESHAPE to its input's own shape disappears (unless it
    writes a model output)."""
    outputs = set(graph.outputs)
    consumers = graph.consumers()
    producers = graph.producers()
    kept: list[Op] = []
    dropped: set[int] = set()
    for op in graph.ops:
        if op.type != "RESHAPE":
            continue
        source = producers.get(op.inputs[0])
        if (source is not None and source.type == "RESHAPE" and id(source) not in dropped
                and len(consumers.get(op.inputs[0], [])) == 1 and op.inputs[0] not in outputs):
            op.inputs[0] = source.inputs[0]
            dropped.add(id(source))
    for op in graph.ops:
        if id(op) in dropped:
            continue
        if (op.type == "RESHAPE" and op.outputs[0] not in outputs
                and graph.tensor(op.inputs[0]).shape == graph.tensor(op.outputs[0]).shape):
            graph.replace_uses(op.outputs[0], op.inputs[0])
            continue
        kept.append(op)
    graph.ops = kept


def _sole(consumers: dict[str, list[Op]], name: str, kind: str, outputs: set[str]) -> Op | None:
    readers = consumers.get(name, [])
    if name in outputs or len(readers) != 1 or readers[0].type != kind:
        return None
    return readers[0]


def _perm(graph: Graph, op: Op) -> list[int] | None:
    data = graph.const(op.inputs[1])
    return None if data is None else [int(v) for v in data.reshape(-1)]


def _same_elements(shape: tuple[int, ...], old: list[tuple[str, object]],
                   new: list[tuple[str, object]]) -> bool:
    """Whether two chains of ("reshape", shape) / ("transpose", perm) move the elements of
    a tensor of `shape` to the same places (checked on the element indices)."""
    def run(chain: list[tuple[str, object]]) -> np.ndarray:
        x = np.arange(int(np.prod(shape))).reshape(shape)
        for kind, arg in chain:
            x = x.reshape(arg) if kind == "reshape" else x.transpose(arg)
        return x
    return np.array_equal(run(old), run(new))


def fold_channel_shuffles(graph: Graph) -> None:
    """A reshape -> transpose -> reshape of channel groups (ShuffleNet's channel shuffle:
    [N, C, H, W] viewed as [N, g, C/g, H, W], the group axes swapped, viewed back) becomes
    RESHAPE -> TRANSPOSE -> RESHAPE on the NHWC tensor, without the two layout TRANSPOSEs
    the NCHW reshapes needed. In place; a rewrite is kept only when it moves every element
    where the original chain does.
    """
    outputs = set(graph.outputs)
    consumers = graph.consumers()
    dropped: set[int] = set()
    for first in graph.ops:
        if first.type != "TRANSPOSE" or _perm(graph, first) != list(TO_NCHW):
            continue
        split = _sole(consumers, first.outputs[0], "RESHAPE", outputs)
        swap = split and _sole(consumers, split.outputs[0], "TRANSPOSE", outputs)
        merge = swap and _sole(consumers, swap.outputs[0], "RESHAPE", outputs)
        last = merge and _sole(consumers, merge.outputs[0], "TRANSPOSE", outputs)
        if not last or _perm(graph, last) != list(TO_NHWC) or _perm(graph, swap) is None:
            continue
        x = graph.tensor(first.inputs[0])
        n, h, w, c = x.shape
        grouped, perm = graph.tensor(split.outputs[0]).shape, _perm(graph, swap)
        k = len(grouped) - 3
        if (k < 1 or grouped[0] != n or tuple(grouped[-2:]) != (h, w) or perm[0] != 0
                or perm[-2:] != [k + 1, k + 2] or graph.tensor(merge.outputs[0]).shape
                != (n, c, h, w)):
            continue
        factors = tuple(grouped[1:-2])
        nhwc_grouped = (n, h, w, *factors)
        nhwc_perm = [0, 1, 2, *(p + 2 for p in perm[1:-2])]
        old = [("transpose", TO_NCHW), ("reshape", grouped), ("transpose", perm),
               ("reshape", (n, c, h, w)), ("transpose", TO_NHWC)]
        new = [("reshape", nhwc_grouped), ("transpose", nhwc_perm), ("reshape", x.shape)]
        if not _same_elements(x.shape, old, new):
            continue
        split.inputs = [x.name, graph.add_const(f"{split.name}_shape_nhwc",
                                                np.asarray(nhwc_grouped, np.int32))]
        split.attrs["new_shape"] = list(nhwc_grouped)
        graph.tensor(split.outputs[0]).shape = nhwc_grouped
        swap.inputs[1] = graph.add_const(f"{swap.name}_perm_nhwc", np.asarray(nhwc_perm, np.int32))
        graph.tensor(swap.outputs[0]).shape = tuple(nhwc_grouped[i] for i in nhwc_perm)
        merge.inputs[1] = graph.add_const(f"{merge.name}_shape_nhwc",
                                          np.asarray(x.shape, np.int32))
        merge.attrs["new_shape"] = list(x.shape)
        merge.outputs[0] = last.outputs[0]
        dropped.update((id(first), id(last)))
    graph.ops = [op for op in graph.ops if id(op) not in dropped]


def merge_transposes(graph: Graph) -> None:
    """A TRANSPOSE read only by another TRANSPOSE: the two become one with the composed
    perm, or disappear when the second undoes the first (in place).

    Layout round trips: where two rank changes met and `fold_reshapes` removed the reshapes
    between them (a [N, C, 1, L] image squeezed to a Conv1d's sequence and lifted back to
    [N, C, 1, L]); attention's rank-4 tensors, written NHWC and read back in NCHW order
    (`layouts.gather_layout`, `layouts.matmul_layout`), with k's transpose between."""
    outputs = set(graph.outputs)
    changed = True
    while changed:
        changed = False
        consumers = graph.consumers()
        for first in graph.ops:
            if first.type != "TRANSPOSE":
                continue
            second = _sole(consumers, first.outputs[0], "TRANSPOSE", outputs)
            p, q = _perm(graph, first), second and _perm(graph, second)
            if not second or p is None or q is None:
                continue
            perm = [p[i] for i in q]
            if perm == list(range(len(p))) and second.outputs[0] not in outputs:
                graph.replace_uses(second.outputs[0], first.inputs[0])
                graph.ops = [op for op in graph.ops if op is not first and op is not second]
            else:
                second.inputs = [first.inputs[0], graph.add_const(
                    f"{second.name}_perm", np.asarray(perm, np.int32))]
                graph.ops = [op for op in graph.ops if op is not first]
            changed = True
            break
