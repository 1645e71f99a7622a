"""QDQ patterns beyond onnxruntime's own quantizer: hand-built graphs as a PT2E
(torchao) export or another tool writes them, each compared with onnxruntime
running the same QDQ model (within one output quantization step), with the
TFLite ops the pattern must become."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("ai_edge_litert")

from qdq_graphs import QDQGraph, steps_off  # noqa: E402

from edgecnn.errors import EdgecnnError  # noqa: E402
from edgecnn.export.tflite import ConversionWarning, to_flatbuffer  # noqa: E402
from edgecnn.runtime.backends.tflite import interpreter  # noqa: E402
from edgecnn.verify.litert import op_counts  # noqa: E402

RNG = np.random.default_rng(7)


def _conv_input(g: QDQGraph) -> str:
    x = g.qdq("x", 0.02, 0)
    return g.op("Conv", [x, g.weights("w", RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
                                      * 0.3), g.const("b", RNG.standard_normal(8)
                                                      .astype(np.float32) * 0.1)],
                "c", pads=[1, 1, 1, 1])


X = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)


def test_pt2e_conv_relu6_fuses_and_quantizes_float_bias() -> None:
    """conv -> clip(0,6) -> Q with a float bias and no Q between: one CONV_2D with
    fused RELU6 and an int32 bias of scale input x weight."""
    g = QDQGraph()
    c = _conv_input(g)
    g.op("Clip", [c, g.const("lo", np.float32(0)), g.const("hi", np.float32(6))], "r")
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq("r", 6 / 255, -128))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"CONV_2D": 1}
    assert steps_off(model, data, X) <= 1
    it = interpreter(data, delegate=False)
    conv = next(t for t in it.get_tensor_details() if t["dtype"] == np.int32)
    weight = next(t for t in it.get_tensor_details()
                  if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][0] == 8
                  and t["shape"][3] == 4)
    expected = np.float32(0.02) * weight["quantization_parameters"]["scales"]
    np.testing.assert_allclose(conv["quantization_parameters"]["scales"], expected, rtol=1e-6)


@pytest.mark.parametrize("same", [True, False], ids=["same_params", "rescaled"])
def test_relu_between_two_quantized_tensors(same: bool) -> None:
    """Q between conv and relu: fused when both sides share parameters (exact),
    else RELU stays as an int8 op that rescales."""
    g = QDQGraph()
    c = g.qdq(_conv_input(g), 0.05, -10, tag="conv_out")
    r = g.op("Relu", [c], "r")
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(r, 0.05 if same else 0.03,
                                               -10 if same else -128, tag="relu_out"))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == ({"CONV_2D": 1} if same else {"CONV_2D": 1, "RELU": 1})
    assert steps_off(model, data, X) <= 1


def test_two_quantizations_of_one_tensor_requantize() -> None:
    """A tensor quantized twice with different parameters: the second is a QUANTIZE."""
    g = QDQGraph()
    a = g.qdq("x", 0.02, 0, tag="a")
    b = g.qdq("x", 0.05, 3, tag="b")
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(g.op("Add", [a, b], "s"), 0.08, 0))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"ADD": 1, "QUANTIZE": 1}
    assert steps_off(model, data, X) <= 1


def test_uint8_activations_become_int8() -> None:
    """uint8 Q/DQ (asymmetric 0..255) convert to int8 with the zero point moved by -128."""
    g = QDQGraph()
    x = g.qdq("x", 0.02, 128, dtype=np.uint8)
    c = g.op("Conv", [x, g.weights("w", RNG.standard_normal((8, 4, 1, 1)).astype(np.float32)),
                      g.const("b", np.zeros(8, np.float32))], "c")
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(c, 0.04, 120, dtype=np.uint8))
    data = to_flatbuffer(model)
    it = interpreter(data)
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert it.get_input_details()[0]["quantization"][1] == 0
    assert it.get_output_details()[0]["quantization"][1] == -8
    assert steps_off(model, data, X) <= 1


def test_same_scale_output_keeps_its_parameters() -> None:
    """MAX_POOL whose output has its own parameters, as the model output or inside the
    graph: a QUANTIZE after it (TFLite's max pool copies int8 values)."""
    g = QDQGraph()
    p = g.op("MaxPool", [g.qdq("x", 0.02, 0)], "p", kernel_shape=[2, 2], strides=[2, 2])
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(p, 0.03, -5))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"MAX_POOL_2D": 1, "QUANTIZE": 1}
    assert steps_off(model, data, X) <= 1

    g = QDQGraph()
    p = g.qdq(g.op("MaxPool", [g.qdq("x", 0.02, 0)], "p", kernel_shape=[2, 2], strides=[2, 2]),
              0.03, -5)
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(g.op("Sigmoid", [p], "s"), 1 / 256, -128))
    with pytest.warns(ConversionWarning, match="QUANTIZE added"):
        data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"MAX_POOL_2D": 1, "QUANTIZE": 1, "LOGISTIC": 1}
    assert steps_off(model, data, X) <= 1


def test_max_pool_padding_of_relu_ranged_input_is_a_plain_pad() -> None:
    """Zero point -128 is the lowest int8 value: padding with it equals padding with
    -inf, so a PAD (which XNNPACK takes) replaces PADV2."""
    g = QDQGraph()
    x = g.qdq(g.op("Relu", [g.qdq("x", 0.02, 0)], "r"), 0.02, -128)
    p = g.op("MaxPool", [x], "p", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(p, 0.02, -128))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"RELU": 1, "PAD": 1, "MAX_POOL_2D": 1}
    assert steps_off(model, data, X) <= 1


def test_weight_only_quantization_gives_a_float_model() -> None:
    """DequantizeLinear on weights alone (no activation Q/DQ): a float CONV_2D with
    the dequantized weights, no hybrid int8 kernel."""
    g = QDQGraph()
    w = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
    model = g.model({"x": (1, 4, 8, 8)}, g.op("Conv", ["x", g.weights("w", w)], "c",
                                                pads=[1, 1, 1, 1]))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"CONV_2D": 1}
    it = interpreter(data)
    assert all(t["dtype"] == np.float32 for t in it.get_tensor_details())
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    it.set_tensor(it.get_input_details()[0]["index"], X.transpose(0, 2, 3, 1))
    it.invoke()
    out = it.get_tensor(it.get_output_details()[0]["index"]).transpose(0, 3, 1, 2)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-5


# --- no silent change of a QDQ tensor's parameters ------------------------------------------

def test_average_pool_with_its_own_output_scale_is_requantized() -> None:
    """Q(s) -> AveragePool -> Q(s/4): AVERAGE_POOL_2D can only write its input's scale, so a
    QUANTIZE follows it, said in a ConversionWarning (running the pool at s and keeping s
    downstream put 25% of outputs more than one step off onnxruntime)."""
    g = QDQGraph()
    p = g.op("AveragePool", [g.qdq("x", 0.02, 0)], "p", kernel_shape=[2, 2], strides=[2, 2])
    c = g.op("Conv", [g.qdq(p, 0.005, 0, tag="p_out"),
                      g.weights("w", RNG.standard_normal((8, 4, 1, 1)).astype(np.float32)),
                      g.const("b", np.zeros(8, np.float32))], "c")
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(c, 0.02, 0, tag="c_out"))
    with pytest.warns(ConversionWarning, match="1 op.*equal input and output scales"):
        data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"AVERAGE_POOL_2D": 1, "QUANTIZE": 1, "CONV_2D": 1}
    assert steps_off(model, data, X) <= 1


def test_float_weights_of_an_int8_op_are_quantized_with_a_warning() -> None:
    """A conv between quantized activations whose weights the QDQ model left float: the
    converter quantizes them (TFLite has no such kernel) and says so."""
    g = QDQGraph()
    w = g.const("w", RNG.standard_normal((8, 4, 3, 3)).astype(np.float32))
    c = g.op("Conv", [g.qdq("x", 0.02, 0), w], "c", pads=[1, 1, 1, 1])
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(c, 0.1, 0, tag="c_out"))
    with pytest.warns(ConversionWarning, match="float weights of an int8 op quantized by the "
                                               "converter.*Conv_\\d+ \\(CONV_2D\\)"):
        to_flatbuffer(model)


def test_int8_io_refuses_a_float_model_input() -> None:
    """io="int8" on a QDQ model whose input no QuantizeLinear reads: one line, no file."""
    g = QDQGraph()
    c = g.op("Conv", ["x", g.weights("w", RNG.standard_normal((8, 4, 1, 1)).astype(np.float32))],
             "c")
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(g.op("Relu", [g.qdq(c, 0.1, 0, tag="c_out")],
                                                    "r"), 0.1, -128, tag="r_out"))
    with pytest.raises(EdgecnnError, match="io='int8' needs a quantized model input, but input "
                                           "'x' is float"):
        to_flatbuffer(model)
    assert op_counts(to_flatbuffer(model, io="float"))["CONV_2D"] == 1


def test_bias_beyond_int32_raises_the_weight_scale_in_the_converter() -> None:
    """A float bias of 6 on a channel with weight scale 1e-9 (input scale 0.01): the int32
    bias would be 6e11; the converter raises that channel's weight scale instead (noted),
    and the .tflite computes what the QDQ model says (onnxruntime without its QLinearConv
    fusion, which quantizes the float bias itself and turns that channel's 6.0 into 0)."""
    g = QDQGraph()
    w = RNG.standard_normal((8, 4, 1, 1)).astype(np.float32)
    w[3] = 1e-7
    b = np.zeros(8, np.float32)
    b[3] = 6.0
    c = g.op("Conv", [g.qdq("x", 0.01, 0), g.weights("w", w), g.const("b", b)], "c")
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(c, 0.05, 0, tag="c_out"))
    with pytest.warns(ConversionWarning, match="weight scale raised so the int32 bias fits"):
        data = to_flatbuffer(model)
    assert steps_off(model, data, X, optimized=False) <= 1


def test_a_silent_change_of_a_qdq_scale_is_caught(monkeypatch) -> None:
    """The converter's own check: a pass that retargets a QDQ tensor without a note is a
    defect the conversion refuses, naming the tensor."""
    from edgecnn.export.tflite import passes

    def retarget(graph) -> None:
        graph.tensor("p").quant = graph.tensor("x").quant

    index = passes.TFLITE_PASSES.index(passes.qdq.check_qdq_params)
    monkeypatch.setattr(passes, "TFLITE_PASSES", (*passes.TFLITE_PASSES[:index], retarget,
                                                  *passes.TFLITE_PASSES[index:]))
    monkeypatch.setattr("edgecnn.export.tflite.TFLITE_PASSES", passes.TFLITE_PASSES)
    g = QDQGraph()
    p = g.qdq(g.op("MaxPool", [g.qdq("x", 0.02, 0)], "p", kernel_shape=[2, 2], strides=[2, 2]),
              0.03, -5)
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(g.op("Relu", [p], "r"), 0.03, -128, tag="r_out"))
    with pytest.raises(EdgecnnError, match="converter defect: tensor 'p' was given"):
        to_flatbuffer(model)


@pytest.mark.parametrize("zero, ops", [
    (-128, {"RSQRT": 1}),
    (0, {"DEQUANTIZE": 1, "SQRT": 1, "DIV": 1, "QUANTIZE": 1}),
], ids=["non_negative_grid", "grid_with_negatives"])
def test_rsqrt_is_int8_when_its_input_grid_is_non_negative(zero: int, ops: dict) -> None:
    """DQ -> Sqrt -> Reciprocal -> Q (torch's rsqrt): one int8 RSQRT when the input's grid
    starts at 0; when it holds negative values (zero point above -128) a float island,
    since the int8 kernel fails at run time on an input below its zero point."""
    g = QDQGraph()
    r = g.op("Reciprocal", [g.op("Sqrt", [g.qdq("x", 0.02, zero)], "s")], "r")
    model = g.model({"x": (1, 4, 8, 8)}, g.qdq(r, 1.5 / 255, -128))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == ops
    assert steps_off(model, data, np.abs(X) + 0.5) <= 1


def _hardswish_steps(x_scale: float, x_zero: int, *, delegate: bool) -> np.ndarray:
    """|LiteRT - onnxruntime| in output steps of a QDQ HardSwish on every int8 value of x."""
    g = QDQGraph()
    x = g.qdq("x", x_scale, x_zero)
    high = x_scale * (127 - x_zero)
    y_scale = (max(high, 0.0) + 0.375) / 255  # hard-swish's range, [-0.375, high]
    y_zero = int(np.clip(round(-128 + 0.375 / y_scale), -128, 127))
    model = g.model({"x": (1, 1, 16, 16)}, g.qdq(g.op("HardSwish", [x], "h"), y_scale, y_zero))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"MUL": 2, "ADD": 1}
    values = ((np.arange(-128, 128) - x_zero) * np.float32(x_scale)).astype(np.float32)
    grid = values.reshape(1, 1, 16, 16)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": grid})[0]
    it = interpreter(data, delegate=delegate)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(inp["index"], (np.arange(-128, 128, dtype=np.int8)
                                 .reshape(1, 16, 16, 1)))
    it.invoke()
    scale, zero = out["quantization"]
    y = it.get_tensor(out["index"]).reshape(-1).astype(np.int32)
    return np.abs(y - np.rint(ref.reshape(-1) / np.float32(scale)) - zero)


@pytest.mark.parametrize("steps,zero", [(127, -128), (70, 23), (44, 4), (12, 100), (1, -60)])
def test_hardswish_on_a_three_over_n_grid_rounds_once(steps: int, zero: int) -> None:
    """x's scale 3 / n, as edgecnn's quantizer sets a hard-swish's input
    (`qmath.hardswish_input_scale`): the gate is exact and the chain rounds once, as
    onnxruntime does, so on XNNPACK every one of the 256 int8 inputs gives onnxruntime's
    integer; the builtin kernels (TFLite's reference MUL rounds ties away from zero) at
    most one step off."""
    assert _hardswish_steps(3 / steps, zero, delegate=True).max() == 0
    assert _hardswish_steps(3 / steps, zero, delegate=False).max() <= 1


def test_hardswish_on_another_grid_rounds_its_gate() -> None:
    """Any other scale (a QDQ model from another quantizer; here the one a trained
    MobileNetV3 block's first hard-swish read before its scale was raised to 3 / 70): the
    gate on its own grid (`_gate_quant`) adds a fraction of a step, so a few inputs land
    one step off."""
    off = _hardswish_steps(0.042488635, 23, delegate=True)
    assert off.max() == 1 and 0.9 <= (off == 0).mean() < 1


def test_linear_on_tokens_is_one_fully_connected_with_its_bias() -> None:
    """nn.Linear on [N, L, C] as torch.onnx writes a PT2E program: MatMul(x, Transpose(DQ(W)))
    -> Add(DQ(int32 bias)), the product unquantized: one int8 FULLY_CONNECTED (keep_num_dims,
    per-channel weights) with the bias, as a 2-D Linear's Gemm."""
    g = QDQGraph()
    x = g.qdq("x", 0.03, 2)
    w = g.weights("w", RNG.standard_normal((10, 16)).astype(np.float32) * 0.3)
    bias = RNG.standard_normal(10).astype(np.float32) * 0.1
    b_scale = (0.03 * g.inits["w_s"]).astype(np.float32)
    g.const("b_q", np.round(bias / b_scale).astype(np.int32))
    g.const("b_s", b_scale)
    g.const("b_z", np.zeros(10, np.int32))
    g.op("DequantizeLinear", ["b_q", "b_s", "b_z"], "b", axis=0)
    g.op("Transpose", [w], "wt", perm=[1, 0])
    g.op("Add", [g.op("MatMul", [x, "wt"], "p"), "b"], "linear")
    model = g.model({"x": (1, 6, 16)}, g.qdq("linear", 0.05, -3))
    data = to_flatbuffer(model)
    assert dict(op_counts(data)) == {"FULLY_CONNECTED": 1}
    tokens = np.random.default_rng(3).standard_normal((1, 6, 16)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": tokens})[0]
    for delegate in (True, False):
        it = interpreter(data, delegate=delegate)
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        scale, zero = inp["quantization"]
        it.set_tensor(inp["index"], np.clip(np.round(tokens / scale) + zero, -128, 127)
                      .astype(np.int8))
        it.invoke()
        scale, zero = out["quantization"]
        expected = np.clip(np.round(ref / scale) + zero, -128, 127)
        assert np.abs(it.get_tensor(out["index"]).astype(np.int32) - expected).max() <= 1


def test_an_expand_no_binary_op_broadcasts_is_refused_naming_its_reader() -> None:
    """An Expand read by an op that does not broadcast (here a Relu) stays, and its
    lowering refuses it, naming the reader."""
    g = QDQGraph()
    g.op("Relu", [g.op("Expand", ["x", g.const("shape", np.array([1, 4, 8, 8]))], "e")], "r")
    model = g.model({"x": (1, 4, 1, 1)}, "r")
    with pytest.raises(EdgecnnError, match=r"Expand.*Add / Sub / Mul.*\(Relu\)"):
        to_flatbuffer(model)
