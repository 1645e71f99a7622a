"""Gemm / MatMul with constant weights -> FULLY_CONNECTED; MatMul of two activations ->
BATCH_MATMUL."""

from __future__ import annotations

import numpy as np

from edgecnn.export.tflite.graph import Quant, Tensor
from edgecnn.export.tflite.layouts import matmul_layout
from edgecnn.export.tflite.ops.base import Lowering, register
from edgecnn.export.tflite.ops.conv import bias_input


def _weights_out_in(ctx: Lowering, w: Tensor, transposed: bool) -> str:
    """Weights as [out, in]; a per-channel axis must be the output features."""
    if w is None or not w.is_const or w.rank != 2:
        raise ctx.fail("weights must be a rank-2 constant (initializer)")
    out_axis = 0 if transposed else 1
    if w.quant is not None and w.quant.axis not in (None, out_axis):
        raise ctx.fail("weights must be quantized per output feature")
    if transposed:
        return w.name
    quant = w.quant and Quant(w.quant.scale, w.quant.zero_point, 0 if w.quant.axis else None)
    return ctx.graph.add_const(f"{w.name}_t", np.ascontiguousarray(w.data.T), quant=quant)


@register("Gemm")
def lower_gemm(ctx: Lowering, *, alpha: float = 1.0, beta: float = 1.0, transA: int = 0,
               transB: int = 0) -> None:
    """Y = A @ B' + C with A [N,K], B constant, C constant [out] or absent.

    Lowers to FULLY_CONNECTED (weights [out,in]; int8 per-output-feature or
    per-tensor when quantized; bias made int32 by `quantize_biases`). alpha and
    beta must be 1 (a converter for torch Linear never sees others).
    """
    a, y = ctx.input(0), ctx.output()
    if transA or alpha != 1.0 or beta != 1.0:
        raise ctx.fail(f"transA={transA}, alpha={alpha}, beta={beta} are not supported "
                       f"(need 0, 1, 1)")
    if a.rank != 2:
        raise ctx.fail(f"input A has rank {a.rank}; Gemm needs 2")
    weights = _weights_out_in(ctx, ctx.input(1), bool(transB))
    bias = ctx.input(2)
    if bias is not None and (not bias.is_const or bias.data.size != y.shape[1]):
        raise ctx.fail("C must be a constant with one value per output feature")
    ctx.emit("FULLY_CONNECTED", [a.name, weights, bias_input(ctx, bias, y.shape[1])], [y.name],
             fused_activation_function="NONE", keep_num_dims=False)


@register("MatMul", layout=matmul_layout)
def lower_matmul(ctx: Lowering) -> None:
    """Y = A @ B [+ C]. B a constant [K, N] -> FULLY_CONNECTED (keep_num_dims for rank > 2;
    C, a bias `passes.fusions.fuse_matmul_bias` folded in from the Add after it);
    B an activation (a global-context block's attention pooling, [N, C, HW] @ [N, HW, 1];
    attention's [N, heads, L, d] @ [N, heads, d, L], read in NCHW order: `matmul_layout`)
    -> BATCH_MATMUL over A and B of equal rank 2, 3 or 4.

    int8: BATCH_MATMUL's inputs and output each keep their own parameters (version 2).
    """
    a, b, y = ctx.input(0), ctx.input(1), ctx.output()
    if b is not None and not b.is_const:
        if a.rank != b.rank or a.rank not in (2, 3, 4):
            raise ctx.fail(f"a product of two activations of ranks {a.rank} and {b.rank}; "
                           f"supported: both of rank 2, 3 or 4")
        ctx.emit("BATCH_MATMUL", [a.name, b.name], [y.name], adj_x=False, adj_y=False,
                 asymmetric_quantize_inputs=False)
        return
    weights = _weights_out_in(ctx, b, transposed=False)
    bias = bias_input(ctx, ctx.input(2), y.shape[-1])
    ctx.emit("FULLY_CONNECTED", [a.name, weights, bias], [y.name],
             fused_activation_function="NONE", keep_num_dims=a.rank > 2)
