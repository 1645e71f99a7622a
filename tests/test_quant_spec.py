"""The TFLite int8 spec on converted graphs: count the nodes, read the parameters.

A small untrained model covers every annotator (conv+bn+relu6, depthwise,
conv+bn into a residual add, squeeze-excite with SiLU and a sigmoid gate,
conv+relu, concat, hardswish, max pool, reshape, linear); structure does not
need training. Accuracy on real data is in test_quant_accuracy.py.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.config import ArtifactMetadata, Preprocessing
from edgecnn.errors import EdgecnnError
from edgecnn.models import create_model
from edgecnn.models.blocks import ConvBnAct, InvertedResidual, MBConv
from edgecnn.quant import (
    PTQ,
    QAT,
    QAT_SCHEDULE,
    QuantConfig,
    UnquantizedOpWarning,
    load_program,
    qdq_counts,
    quantize,
    save_program,
    weighted_ops,
)
from edgecnn.quant.graph import calls
from edgecnn.train import TrainConfig

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten


class Toy(nn.Module):
    """One of each pattern the quantizer annotates, 16x16 single-channel input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnAct(1, 16, 3)                   # conv + bn + relu6
        self.pool = nn.MaxPool2d(2)                       # shares its input's qparams
        self.ir = InvertedResidual(16, 16, expand_ratio=2)  # depthwise, conv+bn, add
        self.mb = MBConv(16, 16, expand_ratio=2)          # SiLU, SE (mean, sigmoid, mul)
        self.branch = ConvBnAct(16, 8, 1, act_layer=nn.ReLU)
        self.hs = nn.Hardswish()
        self.fc = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = self.mb(self.ir(x))
        x = torch.cat([x, self.branch(x)], 1)             # concat shares one quantization
        x = self.pool(self.hs(x))
        return self.fc(x.reshape(x.shape[0], -1))


def toy_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(n, 1, 16, 16, generator=generator),
            torch.randint(0, 10, (n,), generator=generator))


def toy_model() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


@pytest.fixture(scope="module", params=["ptq", "qat"])
def converted(request):
    x, y = toy_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)  # every op of Toy is known
        recipe = {"ptq": PTQ(calib_batches=2),
                  "qat": QAT(train=replace(QAT_SCHEDULE, epochs=1, batch_size=32))}[request.param]
        return quantize(toy_model(), x[:2], recipe, train_data=(x, y))


def nodes(gm, target) -> list:
    return [n for n in gm.graph.nodes if calls(n, target)]


def output_qparams(node) -> tuple[float, int]:
    """(scale, zero point) of the quantize node that consumes `node`."""
    (q,) = [u for u in node.users if calls(u, qd.quantize_per_tensor.default)]
    return float(q.args[1]), int(q.args[2])


def input_qparams(node, index: int = 0) -> tuple[float, int]:
    dq = node.args[index]
    assert calls(dq, qd.dequantize_per_tensor.default), f"{node.name} input {index} is float"
    return float(dq.args[1]), int(dq.args[2])


# --- config ---------------------------------------------------------------------------------

def test_default_config_is_the_tflite_int8_spec():
    config = QuantConfig()
    assert config.activation_dtype == "int8" and config.activation_range == (-128, 127)
    assert config.weight_range == (-127, 127)
    assert QuantConfig(activation_dtype="uint8").activation_range == (0, 255)


@pytest.mark.parametrize("options, message", [
    ({"observer": "kl"}, "unknown observer 'kl'"),
    ({"activation_dtype": "int4"}, "unknown activation dtype 'int4'"),
    ({"activation_range": (-200, 127)}, "activation_range"),
    ({"weight_range": (-128, 127)}, "weight_range .* must be symmetric"),
    ({"weight_range": (-200, 200)}, "weight_range"),
])
def test_config_rejects_bad_values_naming_the_field(options, message):
    with pytest.raises(EdgecnnError, match=message):
        QuantConfig(**options)


@pytest.mark.parametrize("make, message", [
    (lambda: QAT(freeze_bn_fraction=-0.1), "freeze_bn_fraction"),
    (lambda: QAT(freeze_observer_fraction=0.0), "freeze_observer_fraction"),
    (lambda: QAT(freeze_observer_fraction=1.5), "freeze_observer_fraction"),
    (lambda: QAT(train=TrainConfig(epochs=0)), r"train.epochs must be at least 1 for QAT, got 0"),
    (lambda: QAT(freeze_bn_fraction="0.5"),
     r"freeze_bn_fraction must be a finite number in \[0, 1\], got '0.5'"),
    (lambda: QAT(train=TrainConfig(epochs=2, freeze_epochs=1)), "freeze_epochs does not apply"),
    (lambda: QAT(train={"epochs": 2}), "QAT's train must be a TrainConfig, got dict"),
    (lambda: PTQ(calib_batches=0), r"calib_batches must be an integer in \[1, 1000000\], got 0"),
    (lambda: PTQ(batch_size=True), r"batch_size must be an integer in \[1, 65536\], got True"),
])
def test_recipes_reject_bad_values_naming_the_field(make, message):
    with pytest.raises(EdgecnnError, match=message):
        make()


@pytest.mark.parametrize("train_data, message", [
    ([torch.zeros(4, 3, 16, 16)] * 3, "train_data must be x, .* got a list of 3"),
    (torch.zeros(4, 1, 16, 16),
     r"train_data inputs are \(1, 16, 16\), example_input \(3, 16, 16\)"),
])
def test_quantize_rejects_train_data_of_another_form_or_shape(train_data, message):
    model = create_model("dsc_net", num_classes=10, small_input=True).eval()
    with pytest.raises(EdgecnnError, match=message):
        quantize(model, torch.zeros(2, 3, 16, 16), PTQ(calib_batches=1), train_data=train_data)


# --- structure of the converted graph -------------------------------------------------------

def test_node_counts(converted):
    counts = qdq_counts(converted)
    # 28 quantization points: input, stem, pool (shared), 4 in the inverted residual,
    # 15 in the MBConv (3 SiLU units x 3, SE mean/reduce/silu/gate/mul, pwl, add),
    # branch, concat, hardswish, pool, reshape, linear
    assert counts["quantize_per_tensor"] == 28
    assert counts["conv2d"] == 10 and counts["linear"] == 1
    assert counts["dequantize_per_channel"] == 2 * 11  # an int8 weight and int32 bias each
    assert counts["sigmoid"] == 4 and counts["mul"] == 4  # SiLU as x * sigmoid(x), SE gate
    for absent in ("silu", "batch_norm", "quantize_per_channel", "div"):
        assert absent not in counts, absent


def test_every_conv_and_linear_is_quantized(converted):
    ops = weighted_ops(converted)
    assert len(ops) == len(nodes(converted, aten.conv2d.default)) + 1


def test_weights_are_int8_symmetric_per_output_channel(converted):
    for op in weighted_ops(converted):
        out_channels = op.weight.shape[0]
        assert op.weight.dtype == torch.int8, op.node.name
        assert int(op.weight.min()) >= -127 and int(op.weight.max()) <= 127, op.node.name
        assert op.weight_range == (-127, 127)
        assert op.weight_scale.shape == (out_channels,), op.node.name
        assert torch.all(op.weight_zero_point == 0), op.node.name
        w_dq = op.node.args[1]
        assert w_dq.args[3] == 0  # axis: output channels, conv and linear alike


def test_bias_is_int32_with_scale_input_times_weight(converted):
    for op in weighted_ops(converted):
        assert op.bias is not None and op.bias.dtype == torch.int32, op.node.name
        expected = op.input_scale * op.weight_scale.double()
        torch.testing.assert_close(op.bias_scale.double(), expected, rtol=1e-6, atol=0)
        assert torch.all(op.bias_zero_point == 0), op.node.name
        assert op.node.args[2].args[3:] == (0, -(2**31), 2**31 - 1, torch.int32)


def test_activations_are_int8_per_tensor_asymmetric(converted):
    for q in nodes(converted, qd.quantize_per_tensor.default):
        assert q.args[3:] == (-128, 127, torch.int8), q.name


def test_sigmoid_output_is_fixed_1_over_256_zero_point_minus_128(converted):
    sigmoids = nodes(converted, aten.sigmoid.default)
    assert sigmoids
    for node in sigmoids:
        assert output_qparams(node) == (1.0 / 256.0, -128)


def test_no_quantization_between_conv_and_its_activation(converted):
    activations = nodes(converted, aten.hardtanh.default) + nodes(converted, aten.relu.default)
    assert len(activations) == 4
    for act in activations:
        assert calls(act.args[0], aten.conv2d.default), act.name  # not a dequantize
        assert len(act.args[0].users) == 1
        output_qparams(act)  # the one quantization point of the unit


def test_max_pool_reshape_and_concat_share_their_input_qparams(converted):
    shared = (nodes(converted, aten.max_pool2d.default)
              + nodes(converted, aten.reshape.default))
    assert len(shared) == 3
    for node in shared:
        assert input_qparams(node) == output_qparams(node), node.name
    (cat,) = nodes(converted, aten.cat.default)
    out = output_qparams(cat)
    for i, dq in enumerate(cat.args[0]):
        assert (float(dq.args[1]), int(dq.args[2])) == out, f"concat input {i}"


def test_residual_add_and_mul_take_their_producers_quantization(converted):
    # each input of add / mul is a dequantize of its producer's one quantize (no requantize)
    for node in nodes(converted, aten.add.Tensor) + nodes(converted, aten.mul.Tensor):
        for arg in node.args[:2]:
            q = arg.args[0]
            assert calls(q, qd.quantize_per_tensor.default), node.name
            assert not calls(q.args[0], qd.dequantize_per_tensor.default), node.name


def test_converted_model_tracks_the_float_model(converted):
    x, _ = toy_data(16)
    with torch.no_grad():
        reference, int8 = toy_model()(x), converted(x)
    error = (int8 - reference).norm() / reference.norm()
    assert error < 0.2, float(error)


# --- options ----------------------------------------------------------------------------------

def test_uint8_activations_and_a_7_bit_weight_range():
    x, _ = toy_data()
    config = QuantConfig(activation_dtype="uint8", weight_range=(-63, 63))
    gm = quantize(toy_model(), x[:2], PTQ(calib_batches=1), train_data=x, config=config)
    for q in nodes(gm, qd.quantize_per_tensor.default):
        assert q.args[3:] == (0, 255, torch.uint8)
    for node in nodes(gm, aten.sigmoid.default):
        assert output_qparams(node) == (1.0 / 256.0, 0)
    for op in weighted_ops(gm):
        assert op.weight.dtype == torch.int8 and int(op.weight.abs().max()) <= 63


@pytest.mark.parametrize("observer", ["moving_average", "histogram"])  # minmax: `converted`
def test_every_observer_calibrates(observer):
    x, _ = toy_data()
    gm = quantize(toy_model(), x[:2], PTQ(calib_batches=2, batch_size=32), train_data=x,
                  config=QuantConfig(observer=observer))
    with torch.no_grad():
        reference, int8 = toy_model()(x[:16]), gm(x[:16])
    assert (int8 - reference).norm() / reference.norm() < 0.2


class WithSin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sin(self.conv(x)).mean((2, 3)))


def test_unknown_op_stays_float_with_a_warning_naming_it():
    x = torch.randn(8, 1, 6, 6)
    with pytest.warns(UnquantizedOpWarning, match=r"sin \(aten\.sin\.default\).*stay float"):
        gm = quantize(WithSin().eval(), x[:2], PTQ(calib_batches=1), train_data=x)
    (sin,) = nodes(gm, aten.sin.default)
    assert calls(sin.args[0], qd.dequantize_per_tensor.default)  # float in, float out
    assert any(calls(u, qd.quantize_per_tensor.default) for u in sin.users)


class InPlace(nn.Module):
    """In-place activations and arithmetic as user code writes them, one tensor read again
    after it was written in place."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(inplace=True))
        self.gate = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Hardsigmoid(inplace=True))
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                                  nn.Dropout(0.1, inplace=True))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv(x) * self.gate(x)
        z = self.conv(x)
        z.mul_(0.5)
        w = z + 1  # reads z after its in-place write
        return self.fc(y.add_(x).add(w).mean((2, 3)))


@pytest.mark.parametrize("method", ["ptq", "qat"])
def test_in_place_ops_are_quantized_as_their_functional_forms(method):
    """hardswish_, hardsigmoid_, leaky_relu_, dropout_, mul_, add_: torch.export keeps them
    in place; the capture rewrites them functional (`functionalize_inplace`), so each is
    quantized as its functional form (a hard-swish input on its 3 / n grid) and nothing
    stays float. The rewritten graph computes what the eager model does."""
    from edgecnn.qmath import hardswish_gate_steps
    from edgecnn.quant.calibrate import capture

    torch.manual_seed(0)
    model, x = InPlace().eval(), torch.rand(16, 3, 8, 8)
    gm = capture(model, x[:2], train=False)
    assert not [n.name for n in gm.graph.nodes if n.op == "call_function"
                and str(n.target).split(".")[-2].endswith("_")]
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)
    recipe = PTQ(calib_batches=1, batch_size=16) if method == "ptq" else \
        QAT(train=replace(QAT_SCHEDULE, epochs=1, batch_size=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)
        converted = quantize(model, x[:2], recipe, train_data=(x, torch.arange(16) % 10))
    (hardswish,) = nodes(converted, aten.hardswish.default)
    assert hardswish_gate_steps(float(hardswish.args[0].args[1]))


class WithNorms(nn.Module):
    """LayerNorm over channels-last, GroupNorm, a division by a tensor, a division by a
    number: the first three have no int8 TFLite kernel, the last is a MUL."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(1, 4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.gn(x) / (torch.sigmoid(x) + 1) / 6
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("method", ["ptq", "qat"])
def test_ops_without_an_int8_kernel_are_float_islands(method):
    """No warning, no --keep-float: each reads its int8 producer dequantized, and its int8
    reader quantizes what it writes (a float reader takes it as it is); `float_islands`
    names them; the division by 6 stays int8 (it is a MUL)."""
    from edgecnn.quant.precision import float_islands

    x, y = toy_data(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)
        recipe = {"ptq": PTQ(calib_batches=1),
                  "qat": QAT(train=replace(QAT_SCHEDULE, epochs=1, batch_size=8))}[method]
        gm = quantize(WithNorms().eval(), x[:2], recipe, train_data=(x, y))
    assert float_islands(gm) == ["ln (layer_norm)", "gn (group_norm)", "div"]
    (ln,), (gn,) = nodes(gm, aten.layer_norm.default), nodes(gm, aten.group_norm.default)
    by_tensor, by_number = nodes(gm, aten.div.Tensor)
    for node in (ln, gn):
        assert calls(node.args[0], qd.dequantize_per_tensor.default)
    assert all(calls(u, qd.quantize_per_tensor.default) for u in ln.users)
    assert by_tensor.args[0] is gn  # float into float: no Q/DQ between two islands
    assert calls(by_tensor.args[1], qd.dequantize_per_tensor.default)
    assert calls(by_number.args[0], qd.dequantize_per_tensor.default)
    assert not isinstance(by_number.args[1], torch.fx.Node)
    assert any(calls(u, qd.quantize_per_tensor.default) for u in by_number.users)


class WithSoftplus(nn.Module):
    """softplus: no quantization rule (TFLite has no builtin for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.softplus(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("method", ["ptq", "qat"])
def test_ops_without_a_rule_are_listed_with_the_float_islands(method):
    """An op no annotator claims warns and stays float: the report's float islands list it,
    so an int8 ONNX written without a .tflite does not hide it."""
    from edgecnn.quant.precision import float_islands

    x, y = toy_data(16)
    recipe = {"ptq": PTQ(calib_batches=1),
              "qat": QAT(train=replace(QAT_SCHEDULE, epochs=1, batch_size=8))}[method]
    with pytest.warns(UnquantizedOpWarning, match="softplus"):
        gm = quantize(WithSoftplus().eval(), x[:2], recipe, train_data=(x, y))
    assert float_islands(gm) == ["softplus"]
    (softplus,) = nodes(gm, aten.softplus.default)
    assert calls(softplus.args[0], qd.dequantize_per_tensor.default)


class WithPowers(nn.Module):
    """exp, rsqrt and x ** 2 (TFLite EXP, RSQRT, MUL: int8 kernels); reciprocal, x ** 0.5
    and x ** 3 (DIV, SQRT, POW: none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        a = torch.exp(x) + torch.rsqrt(x ** 2 + 1)
        b = torch.reciprocal(torch.sigmoid(x) + 1) + (torch.sigmoid(x) ** 0.5) * 2
        return self.fc((a + b + x ** 3).mean((2, 3)))


def test_exp_rsqrt_and_square_are_int8_other_powers_float_islands():
    """The quantizer follows the converter's builtins (`LOWERS_TO`, `pow_builtin`): exp,
    rsqrt and x ** 2 read an int8 input and write an int8 output; reciprocal, x ** 0.5 and
    x ** 3 are float islands, named by `float_islands`, no warning."""
    from edgecnn.quant.precision import float_islands

    x, y = toy_data(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)
        gm = quantize(WithPowers().eval(), x[:2], PTQ(calib_batches=1), train_data=(x, y))
    assert float_islands(gm) == ["reciprocal", "pow_2", "pow_3"]
    int8 = [*nodes(gm, aten.exp.default), *nodes(gm, aten.rsqrt.default),
            nodes(gm, aten.pow.Tensor_Scalar)[0]]
    assert [n.args[1] for n in nodes(gm, aten.pow.Tensor_Scalar)] == [2, 0.5, 3]
    for node in int8:
        assert calls(node.args[0], qd.dequantize_per_tensor.default), node
        assert all(calls(u, qd.quantize_per_tensor.default) for u in node.users), node
    for node in (*nodes(gm, aten.reciprocal.default), *nodes(gm, aten.pow.Tensor_Scalar)[1:]):
        assert not any(calls(u, qd.quantize_per_tensor.default) for u in node.args[:1]), node


class WithSelects(nn.Module):
    """clamp with bounds no activation has (MAXIMUM / MINIMUM), x[:, i] (select) and
    unbind (STRIDED_SLICE): each copies its input's int8 values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(1, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        a, b = x[:, 0].clamp(min=0.5), x[:, 1].clamp(-2, 2)
        c, d, _, _ = x.unbind(1)
        return self.fc((a * b + c + d).mean((1, 2)).unsqueeze(1))


def test_clamp_select_and_unbind_share_their_input_qparams():
    """clamp(min=0.5) / clamp(-2, 2), select and unbind's pieces write their input's scale
    and zero point: the converter's MAXIMUM / MINIMUM / STRIDED_SLICE need no QUANTIZE."""
    x, y = toy_data(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)
        gm = quantize(WithSelects().eval(), x[:2], PTQ(calib_batches=1), train_data=(x, y))
    shared = [*nodes(gm, aten.clamp.default), *nodes(gm, aten.select.int)]
    assert len(shared) == 4
    for node in shared:
        assert input_qparams(node) == output_qparams(node), node.name
    (unbind,) = nodes(gm, aten.unbind.int)
    for piece in [u for u in unbind.users if u.users]:
        assert output_qparams(piece) == input_qparams(unbind), piece.name


def test_unknown_op_raises_when_strict():
    x = torch.randn(8, 1, 6, 6)
    with pytest.raises(EdgecnnError, match=r"^no quantization rule for 1 node\(s\): sin "
                                           r"\(aten\.sin\.default\) \(edgecnn\.quant\."
                                           r"known_ops\(\) lists the \d+ aten ops it "
                                           r"quantizes\)$"):
        quantize(WithSin().eval(), x[:2], PTQ(), train_data=x, config=QuantConfig(strict=True))


@pytest.mark.parametrize("recipe, message", [
    ("qat", "recipe must be PTQ\\(...\\) or QAT\\(...\\), got 'qat'"),
    (QAT(), "QAT needs labelled training data"),
])
def test_quantize_rejects_bad_requests(recipe, message):
    x, _ = toy_data(4)
    with pytest.raises(EdgecnnError, match=message):
        quantize(toy_model(), x[:2], recipe, train_data=x)


# --- on disk ----------------------------------------------------------------------------------

def metadata(precision: str = "int8") -> ArtifactMetadata:
    preprocessing = Preprocessing(input_size=(16, 16), channels=1, mean=(0.5,), std=(0.25,),
                                  class_names=tuple(str(i) for i in range(10)))
    return ArtifactMetadata(preprocessing=preprocessing, model="toy", precision=precision)


def test_save_and_load_round_trip_the_program_and_metadata(converted, tmp_path):
    x, _ = toy_data(3)
    path = save_program(tmp_path, converted, metadata(), example_input=x[:2])
    assert path.name == "model_int8.pt2"
    program, loaded = load_program(tmp_path)
    assert loaded == metadata()
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), converted(x), rtol=0, atol=0)
    counts = qdq_counts(program.graph_module)
    assert counts["quantize_per_tensor"] == 28


def test_save_refuses_non_int8_metadata(converted, tmp_path):
    x, _ = toy_data(2)
    with pytest.raises(EdgecnnError, match="precision 'int8'"):
        save_program(tmp_path, converted, metadata("fp32"), example_input=x)


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(EdgecnnError, match="model_int8.pt2"):
        load_program(tmp_path)


def test_qat_simulates_every_conv_bn_fold_and_folds_it_for_convert():
    """Each conv + BN unit trains as torchao's simulated fold, with the unscaling as a
    multiply by the reciprocal factor; eval-mode folding leaves no BN and no unscaling."""
    from torchao.quantization.pt2e import disable_observer

    from edgecnn.quant.bn_fold import fold_batch_norms, qat_units
    from edgecnn.quant.qat import prepare_qat

    x, _ = toy_data()
    model = toy_model()
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    prepared = prepare_qat(model, x[:2])
    units = qat_units(prepared)
    assert len(units) == bns == len(nodes(prepared, aten.batch_norm.default))
    assert all(calls(unscale, aten.mul.Tensor) for _, unscale, _ in units)
    convs = set(nodes(prepared, aten.conv2d.default))
    assert not [n for n in nodes(prepared, aten.div.Tensor) if n.args[0] in convs]
    prepared.eval()
    with torch.no_grad():
        prepared(x)  # observe ranges once, then freeze them
        prepared.apply(disable_observer)
        before = prepared(x)
    assert fold_batch_norms(prepared) == bns
    assert not nodes(prepared, aten.batch_norm.default)
    assert not nodes(prepared, aten.reciprocal.default)
    with torch.no_grad():
        after = prepared(x)
    # the same function up to float rounding, which may flip an activation by one step
    assert (after.argmax(1) == before.argmax(1)).float().mean() >= 0.95
    assert (after - before).abs().mean() <= 0.01 * before.abs().mean()


class WithMaxesAndAbs(nn.Module):
    """CBAM's maxes (amax over channels, torch.max over channels, a global adaptive max
    pool), clamp(min=0), maximum with zeros_like, abs, elu and SE's expand_as."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).clamp(min=0)
        gate = torch.sigmoid(F.adaptive_max_pool2d(x, 1)).expand_as(x)
        x = x * gate + x.amax(1, keepdim=True) + torch.max(x, 1, keepdim=True)[0]
        x = F.elu(torch.abs(x - 0.5))
        x = torch.maximum(x, torch.zeros_like(x))
        return self.fc(x.mean((2, 3)))


def test_maxes_share_their_input_quantization_abs_elu_own_it():
    """amax / max.dim / adaptive max pool, expand_as and maximum copy values (TFLite
    REDUCE_MAX, MAXIMUM; the expand is dropped): input and output on one grid; abs and
    elu (ABS, ELU) requantize; clamp(min=0) is the conv's fused activation; nothing is
    left float."""
    x, y = toy_data(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)
        gm = quantize(WithMaxesAndAbs().eval(), x[:2], PTQ(calib_batches=1), train_data=(x, y))
    (clamp,) = nodes(gm, aten.clamp.default)
    assert calls(clamp.args[0], aten.conv2d.default)  # no quantization between them
    (pool,) = nodes(gm, aten.adaptive_max_pool2d.default)
    (values,) = [u for u in pool.users if u.args[1] == 0]
    shared = [(pool, values), *((n, n) for n in nodes(gm, aten.amax.default)),
              *((n, n) for n in nodes(gm, aten.expand_as.default))]
    (max_dim,) = nodes(gm, aten.max.dim)
    shared.append((max_dim, next(u for u in max_dim.users if u.args[1] == 0)))
    (maximum,) = nodes(gm, aten.maximum.default)
    shared.append((maximum, maximum))
    assert len(shared) == 5
    for reader, writer in shared:
        assert input_qparams(reader) == output_qparams(writer), reader.name
    assert input_qparams(maximum, 1) == input_qparams(maximum)  # the zeros, on x's grid
    for node in (*nodes(gm, aten.abs.default), *nodes(gm, aten.elu.default)):
        input_qparams(node)
        output_qparams(node)


class Dropouts(nn.Module):
    """One module of each dropout aten op torch.export writes (dropout, feature_dropout,
    alpha_dropout, feature_alpha_dropout), and F.dropout following the module's mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.drops = nn.Sequential(nn.Dropout(0.5), nn.Dropout2d(0.5), nn.AlphaDropout(0.5),
                                   nn.FeatureAlphaDropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.dropout(self.drops(self.conv(x)), 0.5, training=self.training)
        return x.mean((2, 3))


def test_qat_train_and_eval_switch_every_dropout():
    """The QAT graph (captured in train mode) drops while fine-tuning and is deterministic
    after .eval(), for every op of the family (`graph.DROPOUT_OPS`), defined once for
    `bn_fold.set_dropout` and the quantizer's rules; convert leaves each switched off."""
    from torchao.quantization.pt2e import disable_observer

    from edgecnn.quant.calibrate import convert
    from edgecnn.quant.graph import DROPOUT_OPS, DROPOUT_TRAIN
    from edgecnn.quant.qat import prepare_qat

    x = torch.randn(4, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnquantizedOpWarning)
        prepared = prepare_qat(Dropouts(), x[:2])
    prepared(x)
    prepared.apply(disable_observer)  # the ranges fixed: only dropout may change the output
    drops = nodes(prepared, DROPOUT_OPS)
    assert sorted({str(n.target) for n in drops}) == sorted(str(op) for op in DROPOUT_OPS)
    assert len(drops) == 5 and all(n.args[DROPOUT_TRAIN] for n in drops)
    assert not torch.equal(prepared(x), prepared(x))
    prepared.eval()
    assert not any(n.args[DROPOUT_TRAIN] for n in drops)
    assert torch.equal(prepared(x), prepared(x))
    prepared.train()
    assert all(n.args[DROPOUT_TRAIN] for n in drops)
    converted = convert(prepared)  # left in train mode: convert switches dropout off
    assert not any(n.args[DROPOUT_TRAIN] for n in nodes(converted, DROPOUT_OPS))
    assert torch.equal(converted(x), converted(x))



class NotRandom(nn.Module):
    """Ops torch tags as random whose arguments can switch it off: RReLU (random in
    training only), attention with dropout_p = 0."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, 2, 1)
        self.act = act or nn.RReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.act(self.conv(x)).flatten(2).transpose(1, 2)
        return F.scaled_dot_product_attention(t, t, t).mean(1)


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def test_qat_refuses_random_ops_outside_the_dropout_family():
    """Stochastic depth (timm's DropPath: bernoulli_ on a new tensor) cannot be switched
    off in a train-mode capture: QAT refuses it, naming the node and the module, where it
    once shipped a random int8 ONNX (RandomUniformLike) and a .tflite with a frozen mask;
    the eval-mode capture (PTQ) has no branch and passes. A tagged op whose arguments
    switch the randomness off (RReLU in eval mode, attention with dropout_p = 0) passes;
    the dropout family is QAT's to switch. In eval mode any random op is refused."""
    from user_models import DropPathNet

    from edgecnn.quant.calibrate import capture
    from edgecnn.quant.graph import draws_random
    from edgecnn.quant.qat import prepare_qat

    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(EdgecnnError) as info:
        prepare_qat(DropPathNet(), x)
    assert str(info.value) == (
        "QAT captures the model in train mode, where node 'bernoulli_' (drop_path) draws "
        "random numbers outside nn.Dropout (stochastic depth / DropPath?): build the model "
        "with drop_path_rate=0 for QAT, or use PTQ")
    assert not any(draws_random(n) for n in capture(DropPathNet(), x, train=False).graph.nodes)
    prepare_qat(DropPathNet(drop_path_rate=0.0), x)
    prepare_qat(Dropouts(), torch.rand(2, 1, 8, 8))
    ptq = capture(NotRandom(), x, train=False)
    assert nodes(ptq, aten.rrelu.default) and nodes(ptq, aten.scaled_dot_product_attention.default)
    with pytest.raises(EdgecnnError, match=r"^QAT captures the model in train mode, where node "
                                           r"'rrelu' \(act\) draws random numbers"):
        capture(NotRandom(), x, train=True)
    capture(NotRandom(nn.ReLU()), x, train=True)
    with pytest.raises(EdgecnnError, match=r"^node 'randn_like' \(test_quant_spec\.py:\d+\) "
                                           r"draws random numbers in eval mode"):
        capture(Noisy(), x, train=False)
