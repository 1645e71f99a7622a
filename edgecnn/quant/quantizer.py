"""`TFLiteInt8Quantizer`: edgecnn's torchao PT2E quantizer for the TFLite int8 spec."""

from __future__ import annotations

import warnings

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule
from torchao.quantization.pt2e.quantizer import Quantizer

from edgecnn.errors import EdgecnnError
from edgecnn.quant.annotators import ANNOTATORS, FLOAT_ISLAND_KEY, known_ops, unannotated
from edgecnn.quant.precision import keep_float, mark_int16
from edgecnn.quant.spec import QuantConfig, make_specs
from edgecnn.util import listing

aten = torch.ops.aten


class UnquantizedOpWarning(UserWarning):
    """An op the quantizer does not know stays float."""


#: ops whose output is a view of their input: an in-place op on one also writes the base
VIEW_OPS = (aten.view.default, aten.reshape.default, aten.slice.Tensor, aten.select.int,
            aten.permute.default, aten.transpose.int, aten.squeeze.dim, aten.squeeze.dims,
            aten.unsqueeze.default, aten.expand.default, aten.flatten.using_ints,
            aten.narrow.default, aten.split.Tensor, aten.split_with_sizes.default,
            aten.chunk.default, aten.unbind.int, aten.as_strided.default, aten.alias.default)


def functional_form(target: object) -> object | None:
    """The out-of-place overload of an in-place aten op (aten.relu_.default ->
    aten.relu.default), None for any other op."""
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", "")
    if not name.endswith("_") or name.startswith("_"):
        return None
    functional = getattr(aten, name[:-1], None)
    return getattr(functional, target._overloadname, None) if functional is not None else None


def functionalize_inplace(gm: GraphModule) -> int:
    """Rewrite in-place ops on activations (nn.ReLU(inplace=True), nn.Hardswish(inplace=True),
    x.add_(y), ...) to their functional form, so the annotators see one op per kind; return
    the count. The nodes after one that read the tensor it wrote read the new node.

    Left as they are: writes to buffers (BatchNorm's num_batches_tracked in QAT, a get_attr),
    writes to a view or through a tensor read by a view op (they also change the base),
    and ops without an out-of-place overload. Mutates `gm` in place.
    """
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    count = 0
    for node in list(gm.graph.nodes):
        functional = functional_form(node.target) if node.op == "call_function" else None
        x = node.args[0] if node.args else None
        if functional is None or not isinstance(x, torch.fx.Node) or x.op == "get_attr" \
                or x.target in VIEW_OPS or any(u.target in VIEW_OPS for u in x.users):
            continue
        later = [u for u in x.users if u is not node and order[u] > order[node]]
        node.target = functional
        for user in later:
            user.replace_input_with(x, node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def decompose_silu(gm: GraphModule) -> int:
    """Rewrite silu(x) as x * sigmoid(x), as TFLite runs it (LOGISTIC + MUL); return the count.

    Mutates `gm` in place (prepare owns the graph at this point).
    """
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.silu.default:
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            gate = gm.graph.call_function(aten.sigmoid.default, (x,))
            product = gm.graph.call_function(aten.mul.Tensor, (x, gate))
        for new in (gate, product):
            new.meta = {k: v for k, v in node.meta.items() if k != "quantization_annotation"}
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _per_dim(value: object, dims: int) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in (values * dims if len(values) == 1 else values)]


#: the string-padding overloads -> (the int-padding overload, spatial dims)
_PADDING_OVERLOADS = {aten.conv1d.padding: (aten.conv1d.default, 1),
                      aten.conv2d.padding: (aten.conv2d.default, 2)}


def resolve_conv_padding(gm: GraphModule) -> int:
    """Rewrite conv1d/conv2d with padding='same' / 'valid' to explicit integer padding.

    torch.export keeps `nn.Conv2d(..., padding='same')` as the `aten.conv2d.padding`
    overload, which no annotator (nor torchao's conv-BN folding) matches. 'same'
    pads dilation x (kernel - 1) in total per spatial dim, the extra pixel of an odd
    total at the end (PyTorch's `_convolution_mode`, TensorFlow's SAME at stride 1):
    symmetric totals become the conv's own padding, odd ones a `constant_pad_nd`
    (zeros) before an unpadded conv. Mutates `gm`; returns the number of convs rewritten.
    """
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _PADDING_OVERLOADS:
            continue
        target, dims = _PADDING_OVERLOADS[node.target]
        x, weight, bias, stride, padding, dilation, groups = (
            *node.args, *[None, 1, "valid", 1, 1][len(node.args) - 2:])
        stride, dilation = _per_dim(stride, dims), _per_dim(dilation, dims)
        kernel = list(weight.meta["val"].shape[2:])
        totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)] \
            if padding == "same" else [0] * dims
        begin = [t // 2 for t in totals]
        end = [t - b for t, b in zip(totals, begin, strict=True)]
        with gm.graph.inserting_before(node):
            if begin != end:  # constant_pad_nd takes (begin, end) pairs, last dim first
                pads = [p for b, e in zip(reversed(begin), reversed(end), strict=True)
                        for p in (b, e)]
                padded = gm.graph.call_function(aten.constant_pad_nd.default, (x, pads, 0.0))
                padded.meta = {k: v for k, v in node.meta.items() if k != "val"}
                with detect_fake_mode([x.meta["val"]]):  # torchao reads the output's meta
                    padded.meta["val"] = aten.constant_pad_nd.default(x.meta["val"], pads, 0.0)
                x, begin = padded, [0] * dims
            conv = gm.graph.call_function(target, (x, weight, bias, stride, begin, dilation,
                                                  groups))
        conv.meta = dict(node.meta)
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


_BATCH_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
_CONVS = (aten.conv1d.default, aten.conv2d.default)


def keep_shared_convs_unfolded(gm: GraphModule) -> int:
    """Put a clone between a conv whose output has other readers and the BatchNorm after it.

    torchao's PTQ conv-BN folding (`_fuse_conv_bn_`) folds a BN into the conv before
    it without checking that the BN is the conv's only reader: in a pre-activation
    ResNet (conv -> [BN -> ReLU -> ..., residual add]) the add then reads the
    normalized tensor, a silently wrong model. With the clone in between, that BN
    stays a standalone op (quantized as such; the converter lowers it to a 1x1
    depthwise conv). Mutates `gm`; returns the number of clones inserted.
    """
    count = 0
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in _BATCH_NORMS:
            continue
        conv = bn.args[0]
        if not (isinstance(conv, torch.fx.Node) and conv.op == "call_function"
                and conv.target in _CONVS and len(conv.users) > 1):
            continue
        with gm.graph.inserting_after(conv):
            clone = gm.graph.call_function(aten.clone.default, (conv,))
        clone.meta = dict(conv.meta)
        bn.replace_input_with(conv, clone)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


class TFLiteInt8Quantizer(Quantizer):
    """Annotates an exported graph with the TFLite int8 spec (see `edgecnn.quant.spec`),
    and the 16x8 scheme on the layers `config.int16` selects.

    `is_qat` selects fake-quantize modules instead of observers. An op no
    annotator claims stays float with an `UnquantizedOpWarning` naming the node,
    or raises `EdgecnnError` when `config.strict`.
    """

    def __init__(self, config: QuantConfig | None = None, *, is_qat: bool = False) -> None:
        super().__init__()
        self.config = config or QuantConfig()
        self.is_qat = is_qat
        self.specs = make_specs(self.config, is_qat=is_qat)

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        decompose_silu(model)
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        keep_float(model, self.config.keep_float)  # claimed first: no annotator quantizes them
        mark_int16(model, self.config.int16)  # annotated as any node, then made int16
        for _, annotate in ANNOTATORS:
            annotate(model, self.specs)
        return model

    def validate(self, model: GraphModule) -> None:
        missing = unannotated(model)
        if not missing:
            return
        names = listing([f"{n.name} ({n.target})" for n in missing])
        message = (f"no quantization rule for {len(missing)} node(s): {names} "
                   f"(edgecnn.quant.known_ops() lists the {len(known_ops())} aten ops it "
                   f"quantizes)")
        if self.config.strict:
            raise EdgecnnError(message)
        for node in missing:  # float in the int8 program: listed with its float islands
            node.meta[FLOAT_ISLAND_KEY] = True
        warnings.warn(f"{message}. These stay float.", UnquantizedOpWarning, stacklevel=2)
