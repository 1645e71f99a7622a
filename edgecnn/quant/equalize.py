"""Cross-layer equalization (CLE) of a captured fp32 graph, before calibration.

Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019, section 4.1: for two layers
y = W2 f(W1 x + b1) + b2 with f positively homogeneous (f(s x) = s f(x) for s > 0:
ReLU, identity), scaling output channel i of layer 1 by 1 / s_i and input channel i
of layer 2 by s_i leaves the function unchanged. The choice

    s_i = sqrt(r1_i * r2_i) / r2_i,   r1_i = max |W1[i, ...]|,  r2_i = max |W2[:, i, ...]|

gives both layers the range sqrt(r1_i * r2_i) on channel i (the paper's optimum for
per-tensor weights). Chains (conv -> conv -> conv) are swept until the scales
settle, as in the paper.

With edgecnn's per-channel weights the gain is mostly on the activation between
the pair, which is quantized per tensor: a channel whose weights (and so whose
activations) are far larger than the others' takes the whole int8 range; equalizing
moves that scale into the next layer's weights.

What is equalized: a conv2d (any groups, depthwise included) whose output feeds only
one conv2d, directly or through one ReLU, both with constant weights. BatchNorm is
folded into the conv before (`fold_batch_norms`; eval-mode statistics, the same
arithmetic as torchao's PTQ fold). Skipped and counted: ReLU6 and other clipping or
non-homogeneous activations (hardtanh, SiLU, hardswish, ...), since scaling moves
where ReLU6 clips (the paper and AIMET replace ReLU6 by ReLU, which changes the
fp32 model; edgecnn keeps the model exact and leaves those pairs alone), and
outputs read by more than one node (a residual add).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch.fx import GraphModule, Node

from edgecnn.quant.annotators import sole_user
from edgecnn.quant.graph import add_zero_bias, calls, constant, layer_name, set_constant

aten = torch.ops.aten

CONV = (aten.conv2d.default,)
BATCH_NORM = (aten.batch_norm.default,)  # what torch.export of an eval-mode model holds
#: positively homogeneous activations CLE may scale through
HOMOGENEOUS = (aten.relu.default,)
#: activations that clip or bend: a pair through one of them is skipped
NOT_HOMOGENEOUS = (aten.hardtanh.default, aten.relu6.default,
                   aten.silu.default, aten.hardswish.default,
                   aten.sigmoid.default, aten.tanh.default,
                   aten.gelu.default, aten.leaky_relu.default, aten.clamp.default)
#: conv2d(input, weight, bias, stride, padding, dilation, groups)
CONV_GROUPS = 6
#: batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, ...)
BN_TRAINING, BN_EPS = 5, 7
SWEEPS = 20  # chains converge in a few; a bound, not a tuning knob
TOLERANCE = 1e-4  # stop when every |s - 1| of a sweep is below this


@dataclass
class EqualizationReport:
    """What `equalize` did: pairs as (layer 1, layer 2) module paths."""

    batch_norms_folded: int = 0
    pairs: list[list[str]] = field(default_factory=list)
    skipped_activation: list[list[str]] = field(default_factory=list)  # (layer, activation op)
    sweeps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _only_reader(node: Node, gm: GraphModule) -> bool:
    """A get_attr whose tensor no other node reads (safe to rewrite in place)."""
    return node.op == "get_attr" and len(node.users) == 1 and \
        sum(1 for n in gm.graph.nodes if n.op == "get_attr" and n.target == node.target) == 1


def _weighted_conv(gm: GraphModule, node: object) -> bool:
    if not calls(node, CONV) or not _only_reader(node.args[1], gm):
        return False
    bias = node.args[2] if len(node.args) > 2 else None
    return bias is None or _only_reader(bias, gm)


@torch.no_grad()
def fold_batch_norms(gm: GraphModule) -> int:
    """Fold every eval-mode BatchNorm that is a conv2d's only reader into the conv:
    W' = W * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * gamma /
    sqrt(var + eps) + beta (computed in float64). Mutates `gm`; returns BNs folded."""
    folded = 0
    for bn in list(gm.graph.nodes):
        conv = bn.args[0] if calls(bn, BATCH_NORM) else None
        if conv is None or not _weighted_conv(gm, conv) or len(conv.users) != 1:
            continue
        if bn.args[BN_TRAINING]:
            continue
        gamma, beta, mean, var = (constant(gm, n) for n in bn.args[1:5])
        if any(t is None for t in (mean, var)):
            continue
        eps = float(bn.args[BN_EPS])
        var64, mean64 = var.double(), mean.double()
        gamma64 = gamma.double() if gamma is not None else torch.ones_like(var64)
        beta64 = beta.double() if beta is not None else torch.zeros_like(var64)
        factor = gamma64 / torch.sqrt(var64 + eps)
        weight_node = conv.args[1]
        weight = constant(gm, weight_node)
        bias_node = conv.args[2] if len(conv.args) > 2 else None
        if bias_node is None:
            bias_node = add_zero_bias(gm, conv, weight.shape[0], "cle_bias")
        bias = constant(gm, bias_node).double()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        set_constant(gm, weight_node, weight.double() * factor.reshape(shape))
        set_constant(gm, bias_node, (bias - mean64) * factor + beta64)
        bn.replace_all_uses_with(conv)
        params = [n for n in bn.args[1:5] if isinstance(n, Node)]
        gm.graph.erase_node(bn)
        for node in params:
            if not node.users:
                gm.graph.erase_node(node)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


def equalization_pairs(gm: GraphModule) -> tuple[list[tuple[Node, Node]], list[list[str]]]:
    """(conv1, conv2) pairs CLE may scale, in graph order, and the skipped ones as
    [layer 1, activation op]: a conv1 feeding one non-homogeneous activation that
    feeds one conv."""
    pairs, skipped = [], []
    for conv1 in gm.graph.nodes:
        if not _weighted_conv(gm, conv1):
            continue
        between = sole_user(conv1)
        act = between if calls(between, HOMOGENEOUS + NOT_HOMOGENEOUS) else None
        conv2 = sole_user(act) if act is not None else between
        if not _weighted_conv(gm, conv2) or conv2.args[0] is not (act or conv1) \
                or constant(gm, conv2.args[1]).shape[0] == 0:
            continue
        if act is not None and not calls(act, HOMOGENEOUS):
            skipped.append([layer_name(conv1), str(act.target).split(".")[-2]])
            continue
        if (act is not None and len(act.users) != 1):
            continue
        pairs.append((conv1, conv2))
    return pairs, skipped


def _groups(conv: Node) -> int:
    return int(conv.args[CONV_GROUPS]) if len(conv.args) > CONV_GROUPS else 1


def _input_channel_view(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """conv2's weight (out, in / groups, kh, kw) as (in channels, out / groups * kh * kw):
    row c holds every weight that reads input channel c."""
    out, per_group = weight.shape[:2]
    w = weight.reshape(groups, out // groups, per_group, -1)  # g, o/g, i/g, k
    return w.permute(0, 2, 1, 3).reshape(groups * per_group, -1)


def _from_input_channel_view(view: torch.Tensor, like: torch.Tensor, groups: int
                             ) -> torch.Tensor:
    out, per_group = like.shape[:2]
    w = view.reshape(groups, per_group, out // groups, -1).permute(0, 2, 1, 3)
    return w.reshape(like.shape)


@torch.no_grad()
def equalize_pair(gm: GraphModule, conv1: Node, conv2: Node) -> torch.Tensor:
    """Scale output channel i of conv1 by 1 / s_i and input channel i of conv2 by s_i,
    s_i = sqrt(r1_i r2_i) / r2_i (module doc); channels where either range is 0 keep
    s_i = 1. Mutates the constants; returns s (float64, conv1's output channels)."""
    w1, w2 = constant(gm, conv1.args[1]).double(), constant(gm, conv2.args[1]).double()
    groups = _groups(conv2)
    r1 = w1.abs().reshape(w1.shape[0], -1).amax(dim=1)
    view = _input_channel_view(w2, groups)
    r2 = view.abs().amax(dim=1)
    if r1.shape != r2.shape:  # channel counts disagree: not a pair this rule covers
        return torch.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 * r2) / torch.where(ok, r2, 1.0), torch.ones_like(r1))
    shape = (-1,) + (1,) * (w1.dim() - 1)
    set_constant(gm, conv1.args[1], w1 / s.reshape(shape))
    bias1 = conv1.args[2] if len(conv1.args) > 2 else None
    if bias1 is not None:
        set_constant(gm, bias1, constant(gm, bias1).double() / s)
    set_constant(gm, conv2.args[1], _from_input_channel_view(view * s[:, None], w2, groups))
    return s


def equalize(gm: GraphModule) -> EqualizationReport:
    """Fold BN, then equalize every pair of `equalization_pairs`, sweeping the chain
    until every scale is within `TOLERANCE` of 1 (at most `SWEEPS` sweeps). Mutates
    `gm`; the fp32 function is unchanged up to float rounding."""
    report = EqualizationReport(batch_norms_folded=fold_batch_norms(gm))
    pairs, report.skipped_activation = equalization_pairs(gm)
    report.pairs = [[layer_name(a), layer_name(b)] for a, b in pairs]
    for sweep in range(1, SWEEPS + 1 if pairs else 1):
        report.sweeps = sweep
        largest = max(float((equalize_pair(gm, a, b) - 1).abs().max()) for a, b in pairs)
        if largest < TOLERANCE:
            break
    gm.recompile()
    return report
