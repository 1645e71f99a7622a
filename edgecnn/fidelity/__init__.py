"""int8 fidelity between runtimes, tensor by tensor.

`tensors`: every quantized activation of an int8 model as the fake-quant
program, onnxruntime and LiteRT (XNNPACK or builtin kernels) compute it, under
one key per tensor. `integer_reference`: what the int8 spec says each op
computes from the integers a runtime fed it, so the error each op adds by
itself is separated from what it inherits. `agreement`: the figures one pair
of runtimes is judged by (top-1 agreement, share of logits within one output
step, the largest difference in steps).
"""
