"""Recognize decomposed ops that TFLite has as one builtin."""

from __future__ import annotations

import math

import numpy as np

from edgecnn.export.tflite.graph import Graph, Op


def _scalar(graph: Graph, name: str) -> float | None:
    data = graph.const(name)
    if data is None or data.size != 1:
        return None
    tensor = graph.tensor(name)
    value = tensor.quant.dequantize(data.reshape(-1)) if tensor.quant is not None else data
    return float(np.asarray(value).reshape(-1)[0])


def _other(op: Op, name: str) -> str | None:
    """The input of a binary op that is not `name` (None when both or neither are)."""
    if len(op.inputs) != 2 or op.inputs.count(name) != 1:
        return None
    return op.inputs[1] if op.inputs[0] == name else op.inputs[0]


def _sole_reader(consumers: dict[str, list[Op]], name: str, kind: str) -> Op | None:
    readers = consumers.get(name, [])
    return readers[0] if len(readers) == 1 and readers[0].type == kind else None


def fuse_gelu(graph: Graph) -> None:
    """x * 0.5 * (1 + erf(x / sqrt(2))) -> one Gelu op (exact GELU; TFLite's GELU builtin).

    torch.onnx writes `nn.GELU()` at opset 18 as Div(x, sqrt 2) -> Erf -> Add 1 ->
    Mul 0.5 -> Mul x; the two Muls may come in either order, the Div may be a Mul by
    1 / sqrt 2. In place; the intermediate tensors (float inside a QDQ model's
    DQ -> ... -> Q) disappear with the chain.
    """
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    fused: dict[int, Op] = {}
    drop: set[int] = set()
    for erf in graph.ops:
        if erf.type != "Erf":
            continue
        scale = producers.get(erf.inputs[0])
        if scale is None or scale.type not in ("Div", "Mul"):
            continue
        x = next((n for n in scale.inputs if graph.const(n) is None), None)
        c = _scalar(graph, _other(scale, x) or "") if x else None
        if c is None or not math.isclose(c if scale.type == "Div" else 1 / c, math.sqrt(2),
                                         rel_tol=1e-5):
            continue
        add = _sole_reader(consumers, erf.outputs[0], "Add")
        if add is None or _scalar(graph, _other(add, erf.outputs[0]) or "") != 1.0:
            continue
        first = _sole_reader(consumers, add.outputs[0], "Mul")
        second = _sole_reader(consumers, first.outputs[0], "Mul") if first else None
        if second is None:
            continue
        a, b = _other(first, add.outputs[0]), _other(second, first.outputs[0])
        if {_scalar(graph, a or "") if a != x else "x",
                _scalar(graph, b or "") if b != x else "x"} != {0.5, "x"}:
            continue
        chain = [scale, erf, add, first]
        if any(out in outputs or len(consumers.get(out, [])) != 1
               for op in chain for out in op.outputs):
            continue
        drop.update(id(op) for op in chain)
        fused[id(second)] = Op("Gelu", [x], list(second.outputs), {"approximate": "none"},
                               name=erf.name)
    if fused:
        graph.ops = [fused.get(id(op), op) for op in graph.ops if id(op) not in drop]


def fuse_rsqrt(graph: Graph) -> None:
    """SQRT -> DIV(1, .) (ONNX Sqrt -> Reciprocal: torch.onnx's rsqrt) -> one RSQRT, which
    has an int8 kernel where SQRT and DIV have none. Only when the tensor between them is
    float and read by the DIV alone: in a QDQ model, when the pair sits between one
    DEQUANTIZE and one QUANTIZE (edgecnn's quantizer: aten.rsqrt is one op); a quantized
    tensor between them is a rounding the fusion would drop. An int8 input whose grid
    holds negative values stays SQRT and DIV (a float island): the int8 RSQRT kernel
    refuses a value below its zero point at run time (elementwise.cc), where float gives
    NaN as onnxruntime does. Float: TFLite's RSQRT is 1 / sqrt(x), the same two
    roundings. In place."""
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    drop: set[int] = set()
    for sqrt in graph.ops:
        if sqrt.type != "SQRT" or sqrt.outputs[0] in outputs \
                or graph.tensor(sqrt.outputs[0]).quant is not None:
            continue
        if _holds_negatives(graph.tensor(sqrt.inputs[0])):
            continue
        div = _sole_reader(consumers, sqrt.outputs[0], "DIV")
        if div is None or div.inputs[1] != sqrt.outputs[0] \
                or _scalar(graph, div.inputs[0]) != 1.0 \
                or div.attrs.get("fused_activation_function", "NONE") != "NONE":
            continue
        sqrt.type, sqrt.outputs = "RSQRT", list(div.outputs)
        drop.add(id(div))
    if drop:
        graph.ops = [op for op in graph.ops if id(op) not in drop]


def _holds_negatives(tensor) -> bool:
    """True for a quantized tensor whose lowest integer is below its zero point."""
    quant = tensor.quant
    if quant is None or not np.issubdtype(tensor.dtype, np.integer):
        return False
    return int(np.iinfo(tensor.dtype).min) < int(np.min(quant.zero_point))


def fuse_matmul_bias(graph: Graph) -> None:
    """MatMul(x, W) -> Add(., b), W and b constants, b one value per output feature (how
    torch.onnx writes a Linear on a rank-3 input: ViT tokens), becomes one MatMul with b as
    a third input: FULLY_CONNECTED with a bias, as a 2-D Linear's Gemm is. In place; only
    when the Add alone reads the product (a QDQ model leaves it unquantized)."""
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    drop: set[int] = set()
    for matmul in graph.ops:
        if matmul.type != "MatMul" or len(matmul.inputs) != 2 \
                or graph.const(matmul.inputs[1]) is None or matmul.outputs[0] in outputs:
            continue
        product = matmul.outputs[0]
        add = _sole_reader(consumers, product, "Add")
        bias = _other(add, product) if add else None
        features = graph.tensor(matmul.inputs[1]).shape[-1]
        if bias is None or graph.const(bias) is None or graph.tensor(product).quant is not None \
                or graph.const(bias).size != features \
                or graph.tensor(bias).shape[-1:] != (features,):
            continue
        matmul.inputs.append(bias)
        matmul.outputs = list(add.outputs)
        drop.add(id(add))
    graph.ops = [op for op in graph.ops if id(op) not in drop]
