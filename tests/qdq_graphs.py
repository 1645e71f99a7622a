"""Hand-built QDQ ONNX graphs (as a PT2E export or another tool writes them) and their
comparison with onnxruntime in output quantization steps; used by test_tflite_qdq and
test_precision."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgecnn.qmath import affine_quantize
from edgecnn.runtime.backends.tflite import interpreter
from edgecnn.verify.litert import quantize_input


class QDQGraph:
    """Builds a QDQ ONNX graph node by node."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def const(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def qdq(self, x: str, scale: float, zero: int, tag: str = "", dtype=np.int8) -> str:
        tag = tag or x
        s = self.const(f"{tag}_s", np.float32(scale))
        z = self.const(f"{tag}_z", dtype(zero))
        self.nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{tag}_q"]))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", s, z], [f"{tag}_dq"]))
        return f"{tag}_dq"

    def weights(self, name: str, w: np.ndarray, axis: int = 0) -> str:
        """Symmetric per-channel int8 weights behind a DequantizeLinear."""
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=reduce) / 127).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        self.const(f"{name}_q", q)
        self.const(f"{name}_s", scale)
        self.const(f"{name}_z", np.zeros(scale.size, np.int8))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s",
                                                                f"{name}_z"], [name], axis=axis))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def model(self, inputs: dict[str, tuple[int, ...]], output: str) -> onnx.ModelProto:
        self.op("Identity", [output], "y")
        graph = helper.make_graph(
            self.nodes, "qdq",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                 ir_version=9)


def steps_off(model: onnx.ModelProto, data: bytes, x: np.ndarray, *,
              optimized: bool = True) -> int:
    """Largest difference, in output quantization steps, between LiteRT (with and
    without XNNPACK) and onnxruntime on the QDQ model (`optimized=False`: onnxruntime
    runs each DequantizeLinear / op / QuantizeLinear as written, no QLinear fusion)."""
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model.SerializeToString(), options,
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    worst = 0
    for delegate in (True, False):
        it = interpreter(data, delegate=delegate)
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        it.set_tensor(inp["index"], quantize_input(inp, x.transpose(0, 2, 3, 1)))
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.int32)
        y = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
        scale, zero = out["quantization"]
        expected = affine_quantize(ref, scale, zero)
        worst = max(worst, int(np.abs(y - expected).max()))
    return worst
