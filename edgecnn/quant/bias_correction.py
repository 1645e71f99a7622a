"""Empirical bias correction of a converted (Q/DQ) program, after calibration.

Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019, section 4.2: quantized weights W~ = W + eps shift a layer's
expected output by E[eps x]; subtracting that shift from the bias removes the
biased part of the weight-quantization error. The paper's data-free variant
estimates E[x] from BatchNorm statistics; this is the empirical one (as AIMET's
empirical bias correction): on the calibration images, every int8 conv / linear
computes its output with its dequantized int8 weights and with its float weights
on the same (dequantized int8) input, and the per-output-channel mean of the
difference is subtracted from its bias:

    b'[c] = b[c] - mean over images and positions of (conv(x, W~)[c] - conv(x, W)[c])

It runs between torchao's convert and `graph.quantize_biases`, which then makes
the corrected float bias int32 with the same range rule as any bias
(`qmath.bias_safe_weight_scale`: the weight scale rises if the bias would not
fit). Layers kept float (`--keep-float`) are left alone; all layers are measured in
one pass on the uncorrected program, so each layer's correction covers its own
weights' error, not that of the layers before it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.fx import GraphModule, Interpreter, Node

from edgecnn.quant.graph import (
    DEQUANTIZE_PER_CHANNEL,
    WEIGHTED_OPS,
    add_zero_bias,
    calls,
    constant,
    set_constant,
)

aten = torch.ops.aten


def float_weights(prepared: GraphModule) -> dict[str, torch.Tensor]:
    """Conv / linear node name -> its float weight in a prepared (observed) program: the
    tensor behind the weight observer. Node names survive convert_pt2e."""
    found = {}
    for node in prepared.graph.nodes:
        if not calls(node, WEIGHTED_OPS):
            continue
        weight = node.args[1]
        while isinstance(weight, Node) and weight.op == "call_module":  # the observer
            weight = weight.args[0]
        value = constant(prepared, weight)
        if value is not None:
            found[node.name] = value.detach().clone()
    return found


class _ErrorMeans(Interpreter):
    """Runs the converted program, adding up (int8-weight - float-weight) outputs per
    output channel of every layer in `weights`."""

    def __init__(self, gm: GraphModule, weights: dict[str, torch.Tensor]) -> None:
        super().__init__(gm)
        self.weights = weights
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def run_node(self, n: Node):
        out = super().run_node(n)
        if n.name in self.weights and calls(n, WEIGHTED_OPS):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            reference = n.target(args[0], self.weights[n.name], *args[2:], **kwargs)
            diff = (out - reference).double()
            channel = 1 if calls(n, (aten.conv1d.default, aten.conv2d.default)) else -1
            diff = diff.movedim(channel, 0).reshape(diff.shape[channel], -1)
            self.sums[n.name] = self.sums.get(n.name, 0) + diff.sum(dim=1)
            self.counts[n.name] = self.counts.get(n.name, 0) + diff.shape[1]
        return out


def _quantized_layers(converted: GraphModule, weights: dict[str, torch.Tensor]) -> list[Node]:
    return [n for n in converted.graph.nodes
            if calls(n, WEIGHTED_OPS) and calls(n.args[1], DEQUANTIZE_PER_CHANNEL)
            and n.name in weights]


@torch.no_grad()
def correct_biases(converted: GraphModule, weights: dict[str, torch.Tensor],
                   batches: Iterable[torch.Tensor]) -> dict:
    """Subtract each int8 layer's mean output error (module doc) from its float bias.

    converted: torchao's convert output, biases still float (before
    `graph.add_int32_biases`); weights: `float_weights` of the prepared program;
    batches: preprocessed image batches (N, C, H, W), as `calibrate` reads them (the
    same seeded images). A layer without a bias gets one.
    Mutates `converted`; returns {"layers": corrected count, "images": images used,
    "mean_abs_shift": mean |correction| over all channels}.
    """
    layers = _quantized_layers(converted, weights)
    if not layers:
        return {"layers": 0, "images": 0, "mean_abs_shift": 0.0}
    interpreter = _ErrorMeans(converted, {n.name: weights[n.name] for n in layers})
    images = 0
    for xb in batches:
        interpreter.run(xb)
        images += len(xb)
    shifts = []
    for node in layers:
        if node.name not in interpreter.counts:
            continue
        mean = interpreter.sums[node.name] / interpreter.counts[node.name]
        bias_node = node.args[2] if len(node.args) > 2 else None
        if bias_node is None:
            bias_node = add_zero_bias(converted, node, mean.shape[0], "corrected_bias")
        set_constant(converted, bias_node, constant(converted, bias_node).double() - mean)
        shifts.append(mean.abs())
    converted.graph.lint()
    converted.recompile()
    return {"layers": len(shifts), "images": images,
            "mean_abs_shift": float(torch.cat(shifts).mean()) if shifts else 0.0}
