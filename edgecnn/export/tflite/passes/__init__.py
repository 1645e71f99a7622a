"""Graph rewrites, each small, applied in the declared order.

`ONNX_PASSES` run on the imported ONNX graph before lowering;
`TFLITE_PASSES` run on the lowered graph. Every pass rewrites the graph in
place and says what it changes in its docstring.
"""

from edgecnn.export.tflite.passes.activations import fuse_activations
from edgecnn.export.tflite.passes.channels_last import fold_channels_last
from edgecnn.export.tflite.passes.constants import (
    drop_broadcast_expands,
    fold_constants,
    fold_weight_transposes,
    remove_identities,
)
from edgecnn.export.tflite.passes.fusions import fuse_gelu, fuse_matmul_bias, fuse_rsqrt
from edgecnn.export.tflite.passes.io import float_io, name_io, uint8_io
from edgecnn.export.tflite.passes.islands import isolate_float_ops, mark_float_layers
from edgecnn.export.tflite.passes.layout import to_nhwc
from edgecnn.export.tflite.passes.norms import fuse_group_norm
from edgecnn.export.tflite.passes.pads import fold_pads
from edgecnn.export.tflite.passes.qdq import check_qdq_params, fold_qdq, propagate_quant
from edgecnn.export.tflite.passes.quantization import (
    align_same_scale,
    fix_output_quant,
    quantize_biases,
    quantize_constants,
    set_int16_options,
)
from edgecnn.export.tflite.passes.reshapes import (
    fold_channel_shuffles,
    fold_reshapes,
    merge_transposes,
)
from edgecnn.export.tflite.passes.sequence import lift_conv1d

ONNX_PASSES = (
    fold_constants,      # shape arithmetic and Q(constant) become constants
    remove_identities,   # Identity, inference Dropout
    fold_qdq,            # Q/DQ pairs -> int8 tensors with (scale, zero point)
    fold_weight_transposes,  # Transpose(quantized weights) -> the transposed constant
    fuse_matmul_bias,    # MatMul(x, W) -> Add(b): one MatMul with a bias (rank-3 Linear)
    drop_broadcast_expands,  # Expand read by broadcasting Add / Sub / Mul: dropped
    propagate_quant,     # reshape-like neighbours share parameters
    lift_conv1d,         # Conv1d regions: [N, C, L] -> [N, C, 1, L]
    fold_pads,           # zero Pad -> Conv: the conv's own padding (TF 'SAME' ports)
    fuse_gelu,           # x * 0.5 * (1 + erf(x / sqrt 2)) -> Gelu
    fold_channels_last,  # permute to [N, H, W, C] .. per-position ops .. back -> NCHW ops
    fuse_group_norm,     # GroupNorm(1, C): Reshape -> InstanceNormalization -> Reshape -> one
    to_nhwc,             # NCHW -> NHWC, weights OHWI / 1HWC, axes remapped
)

TFLITE_PASSES = (
    mark_float_layers,   # conv / FC with float weights in a model that declares float layers
    fold_channel_shuffles,  # NCHW group reshape -> transpose -> reshape, kept NHWC
    fold_reshapes,       # RESHAPE chains -> one; no-op reshapes dropped
    merge_transposes,    # TRANSPOSE then TRANSPOSE -> one, or nothing when inverse
    fuse_rsqrt,          # SQRT -> DIV(1, .) over a float tensor -> RSQRT (int8 kernel)
    fuse_activations,    # RELU / RELU6 into the producer, when exact
    isolate_float_ops,   # ops a QDQ model leaves float: DEQUANTIZE / QUANTIZE around them
    quantize_constants,  # weights symmetric int8 per channel; other constants int8
    fix_output_quant,    # LOGISTIC / SOFTMAX (1/256, -128), TANH (1/128, 0)
    align_same_scale,    # pools, reshapes, pads, concat: one scale in and out
    quantize_biases,     # int32, scale = input scale x weight scale
    set_int16_options,   # 16x8 ADD / SUB: general scales (pot_scale_int16 false)
    check_qdq_params,    # every QDQ tensor kept its parameters, or a note says why not
)

__all__ = ["ONNX_PASSES", "TFLITE_PASSES", "float_io", "name_io", "uint8_io"]
