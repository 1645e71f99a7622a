"""`TFLiteInt8Quantizer`: edgecnn's torchao PT2E quantizer for the TFLite int8 spec."""

from __future__ import annotations

import warnings

import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e.quantizer import Quantizer

from edgecnn.errors import EdgecnnError
from edgecnn.quant.annotators import ANNOTATORS, known_ops, unannotated
from edgecnn.quant.spec import QuantConfig, make_specs

aten = torch.ops.aten


class UnquantizedOpWarning(UserWarning):
    """An op the quantizer does not know stays float."""


def decompose_silu(gm: GraphModule) -> int:
    """Rewrite silu(x) as x * sigmoid(x), as TFLite runs it (LOGISTIC + MUL); return the count.

    Mutates `gm` in place (prepare owns the graph at this point).
    """
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.silu.default, aten.silu_.default):
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


class TFLiteInt8Quantizer(Quantizer):
    """Annotates an exported graph with the TFLite int8 spec (see `edgecnn.quant.spec`).

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
        for _, annotate in ANNOTATORS:
            annotate(model, self.specs)
        return model

    def validate(self, model: GraphModule) -> None:
        missing = unannotated(model)
        if not missing:
            return
        names = ", ".join(f"{n.name} ({n.target})" for n in missing)
        message = (f"no quantization rule for {len(missing)} node(s): {names}; "
                   f"supported ops: {', '.join(known_ops())}")
        if self.config.strict:
            raise EdgecnnError(message)
        warnings.warn(f"{message}. These stay float.", UnquantizedOpWarning, stacklevel=2)
