"""Zero padding before a convolution becomes the convolution's own padding."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Graph, Op


def _zero_spatial_pads(graph: Graph, pad: Op) -> list[int] | None:
    """[top, left, bottom, right] of a constant-zero Pad of an NCHW tensor that pads H
    and W only, else None."""
    x = graph.tensor(pad.inputs[0])
    pads = graph.const(pad.inputs[1]) if len(pad.inputs) > 1 else None
    axes = graph.const(pad.inputs[3]) if len(pad.inputs) > 3 and pad.inputs[3] else None
    if x.rank != 4 or pads is None or pad.attrs.get("mode", "constant") != "constant":
        return None
    if len(pad.inputs) > 2 and pad.inputs[2]:
        value = graph.tensor(pad.inputs[2])
        if value.data is None:
            return None
        real = value.quant.dequantize(value.data.reshape(-1)) if value.quant else value.data
        if np.any(np.asarray(real, np.float64) != 0.0):
            return None
    axes = list(range(4)) if axes is None else [int(a) % 4 for a in axes]
    pads = np.asarray(pads, np.int64).reshape(-1)
    full = np.zeros(8, np.int64)
    for i, axis in enumerate(axes):
        full[axis], full[axis + 4] = pads[i], pads[i + len(axes)]
    if full[[0, 1, 4, 5]].any() or (full < 0).any():
        return None
    return [int(full[2]), int(full[3]), int(full[6]), int(full[7])]


def fold_pads(graph: Graph) -> None:
    """Pad(zeros on H, W) -> Conv becomes Conv with the pads added to its own (in place).

    TF-ported weights pad explicitly before strided convs ('SAME': the extra pixel
    at the bottom / right); folded, the conv lowering then finds TFLite's
    padding=SAME and no PAD op is written. Exact in int8 too: a zero-padded int8
    tensor pads with its zero point, as the conv's own padding does, and the Pad
    output must carry the input's parameters (else the Pad stays).
    """
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    removed: set[int] = set()
    for pad in graph.ops:
        if pad.type != "Pad" or pad.outputs[0] in outputs:
            continue
        readers = consumers.get(pad.outputs[0], [])
        if len(readers) != 1 or readers[0].type != "Conv" or readers[0].inputs[0] != pad.outputs[0]:
            continue
        conv = readers[0]
        spatial = _zero_spatial_pads(graph, pad)
        source, padded = graph.tensor(pad.inputs[0]), graph.tensor(pad.outputs[0])
        same_quant = (source.quant is None and padded.quant is None) or \
            (source.quant is not None and source.quant.same_as(padded.quant))
        if spatial is None or not same_quant or conv.attrs.get("auto_pad", "NOTSET") != "NOTSET":
            continue
        own = list(conv.attrs.get("pads") or [0, 0, 0, 0])
        conv.attrs["pads"] = [a + b for a, b in zip(own, spatial, strict=True)]
        conv.inputs[0] = pad.inputs[0]
        removed.add(id(pad))
    graph.ops = [op for op in graph.ops if id(op) not in removed]
