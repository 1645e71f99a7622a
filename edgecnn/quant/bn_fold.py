"""Train / eval switches and the final BN fold for a QAT-prepared graph.

torchao's QAT rewrite of conv + BN (prepare_qat_pt2e) is

    sf = gamma / sqrt(running_var + 1e-5)
    y  = batch_norm(conv(x, fake_quant(W * sf)) / sf, ...)

With BN in eval mode and the same eps, batch_norm(z / sf) equals
z + beta - running_mean * sf, so the unit is exactly conv(x, fake_quant(W * sf))
plus a per-channel bias. `fold_batch_norms` rewrites it that way before
convert: the fake-quantized weight is untouched (convert turns it into the
int8 weight and its Q/DQ), the bias becomes a float constant that
`graph.add_int32_biases` makes int32. This replaces torchao's pattern-matching
fold in convert_pt2e, which re-exports dozens of patterns (about a minute per
model on two cores); a unit that does not have the expected shape is left for
torchao's fold.
"""

from __future__ import annotations

import types

import torch
from torch.fx import GraphModule, Node

from edgecnn.quant.graph import DROPOUT_OPS, DROPOUT_TRAIN, calls, constant

aten = torch.ops.aten

#: aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, ...)
BN_TRAINING, BN_EPS = 5, 7
#: the eps torchao's QAT conv-bn pattern hard-codes in its weight scale factor
QAT_PATTERN_EPS = 1e-5


def set_flag(gm: GraphModule, target: object, index: int, value: bool) -> int:
    """Set a literal flag argument on every `target` node (an op or a tuple of ops); return
    how many changed."""
    count = 0
    for node in gm.graph.nodes:
        if calls(node, target) and len(node.args) > index and node.args[index] != value:
            node.args = (*node.args[:index], value, *node.args[index + 1:])
            count += 1
    if count:
        gm.recompile()
    return count


def freeze_bn_stats(gm: GraphModule) -> int:
    """Normalize with running statistics from now on; mutates `gm`, returns nodes changed."""
    return set_flag(gm, aten.batch_norm.default, BN_TRAINING, False)


def set_dropout(gm: GraphModule, mode: bool) -> int:
    """Switch every dropout of the family (`graph.DROPOUT_OPS`) on or off; mutates `gm`,
    returns nodes changed."""
    return set_flag(gm, DROPOUT_OPS, DROPOUT_TRAIN, mode)


def enable_train_eval(gm: GraphModule) -> GraphModule:
    """Make `.train()` / `.eval()` work on a QAT graph captured in train mode.

    train() switches every dropout on (`set_dropout`: nn.Dropout, Dropout1d/2d/3d,
    AlphaDropout, FeatureAlphaDropout; BN statistics follow `freeze_bn_stats`, so
    re-entering train mode never unfreezes them); eval() switches dropout and
    BN statistics off. Mutates and returns `gm`.
    """
    def train(self: GraphModule, mode: bool = True) -> GraphModule:
        set_dropout(self, mode)
        if not mode:
            freeze_bn_stats(self)
        return self

    def eval_(self: GraphModule) -> GraphModule:
        return train(self, False)

    gm.train = types.MethodType(train, gm)  # type: ignore[method-assign]
    gm.eval = types.MethodType(eval_, gm)  # type: ignore[method-assign]
    return gm


def qat_units(gm: GraphModule) -> list[tuple[Node, Node, Node]]:
    """(conv, unscale, bn) of every QAT conv + BN unit of the expected shape: a bias-free
    conv used once, its output divided by the scale factor (or multiplied by its
    reciprocal, see `multiply_by_reciprocal`) and batch-normalized with the pattern's eps."""
    units = []
    for bn in gm.graph.nodes:
        if not calls(bn, aten.batch_norm.default):
            continue
        unscale = bn.args[0]
        reciprocal = calls(unscale, aten.mul.Tensor) and \
            calls(unscale.args[1], aten.reciprocal.default)
        if not (calls(unscale, aten.div.Tensor) or reciprocal):
            continue
        conv = unscale.args[0]
        if not calls(conv, aten.conv2d.default) and not calls(conv, aten.conv1d.default):
            continue
        if (len(conv.args) > 2 and conv.args[2] is not None) or len(conv.users) != 1 \
                or len(unscale.users) != 1 or abs(float(bn.args[BN_EPS]) - QAT_PATTERN_EPS) > 1e-12:
            continue
        units.append((conv, unscale, bn))
    return units


def multiply_by_reciprocal(gm: GraphModule) -> int:
    """conv(x) / sf -> conv(x) * (1 / sf) in every unit: the same simulated fold, but a
    multiply (and its backward) over the feature map instead of a division, which made
    up about a fifth of a mobilenet_v2 QAT step. Mutates `gm`; returns units changed."""
    changed = 0
    for _, unscale, _ in qat_units(gm):
        if calls(unscale, aten.div.Tensor):
            with gm.graph.inserting_before(unscale):
                reciprocal = gm.graph.call_function(aten.reciprocal.default, (unscale.args[1],))
            unscale.target = aten.mul.Tensor
            unscale.args = (unscale.args[0], reciprocal)
            changed += 1
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def fold_batch_norms(gm: GraphModule) -> int:
    """Fold every eval-mode QAT conv + BN unit into conv + float bias (see module doc).

    Mutates `gm`; returns the number of units folded.
    """
    folded = 0
    for conv, unscale, bn in qat_units(gm):
        if bn.args[BN_TRAINING]:
            continue
        gamma, beta, mean, var = (constant(gm, n).detach().to(torch.float64)
                                  for n in bn.args[1:5])
        bias = beta - mean * gamma / torch.sqrt(var + float(bn.args[BN_EPS]))
        name = str(bn.args[1].target).replace(".", "_").removesuffix("_weight") + "_folded_bias"
        gm.register_buffer(name, bias.to(torch.float32))
        with gm.graph.inserting_before(conv):
            bias_node = gm.graph.get_attr(name)
        conv.args = (conv.args[0], conv.args[1], bias_node, *conv.args[3:])
        bn.replace_all_uses_with(conv)
        for node in (bn, unscale, *_factor_nodes(unscale)):
            if not node.users:
                gm.graph.erase_node(node)
        folded += 1
    if folded:
        if not any(calls(n, aten.batch_norm.default) for n in gm.graph.nodes):
            remove_bn_counters(gm)
        gm.graph.lint()
        gm.recompile()
    return folded


def _factor_nodes(unscale: Node) -> list[Node]:
    """The nodes that only feed a unit's unscaling: the reshaped factor (and its reciprocal)."""
    factor = unscale.args[1]
    return [factor, factor.args[0]] if calls(factor, aten.reciprocal.default) else [factor]


def remove_bn_counters(gm: GraphModule) -> None:
    """Drop BN's in-place `num_batches_tracked += 1` updates (meaningless once folded)."""
    for node in list(gm.graph.nodes):
        if calls(node, aten.add_.Tensor) and isinstance(node.args[0], Node) \
                and str(node.args[0].target).endswith("num_batches_tracked") and not node.users:
            gm.graph.erase_node(node)
