"""The TFLite int8 quantization spec, as data and as torchao QuantizationSpecs.

https://ai.google.dev/edge/litert/models/quantization_spec:
- activations: int8, asymmetric, per tensor, [-128, 127];
- conv / depthwise conv / linear weights: int8, symmetric, per output channel,
  [-127, 127], zero point 0;
- bias: int32, scale = input scale x weight scale (per channel), zero point 0
  (made after convert by `graph.add_int32_biases`, in float64);
- LOGISTIC / SOFTMAX output: scale 1/256, zero point -128; LOG_SOFTMAX 16/256, 127;
  TANH 1/128, 0 (the builtin records, `edgecnn.export.tflite.builtins`).

Layers chosen with `QuantConfig.int16` follow TFLite's 16x8 scheme
(https://ai.google.dev/edge/litert/models/post_training_integer_quant_16x8): int16
activations, symmetric per tensor with zero point 0 (the int16 kernels check it),
range [-32767, 32767] as TFLite's own quantizer makes them (scale = max |x| / 32767,
tensorflow/lite/tools/optimize/quantization_utils.cc); weights int8 per channel as
above; the bias int64 in the .tflite (CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED
16x8 kernels), int32 in the program and the ONNX file (the converter widens it); a sigmoid
takes LOGISTIC's fixed 16x8 output, scale 1/32768 and zero point 0 (`Specs.fixed16`,
activations.cc).

`QuantConfig` keeps the choices the exporter may need to revisit per target
(activation dtype, weight range) as fields, so an int8-trained model can be
emitted as uint8 activations (the same grid shifted by 128) without retraining.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torchao.quantization.pt2e import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, QuantizationSpec

from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.export.tflite.builtins import BUILTINS, fixed_outputs
from edgecnn.qmath import hardswish_input_scale

#: activation observer name -> observer class (PTQ; QAT always fake-quantizes with a
#: moving-average min/max, the standard recipe)
OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "histogram": HistogramObserver,
}



class _HardswishInputGrid:
    """An observer whose scale is raised to 3 / n (`qmath.hardswish_input_scale`), zero
    point kept: the grid of a hard-swish's input, on which the int8 lowering's gate is
    exact (`export.tflite.ops.elementwise.lower_hardswish`)."""

    def calculate_qparams(self):
        scale, zero_point = super().calculate_qparams()
        raised = [hardswish_input_scale(float(s)) for s in scale.reshape(-1)]
        return torch.tensor(raised, dtype=scale.dtype).reshape(scale.shape), zero_point


class HardswishInputMinMaxObserver(_HardswishInputGrid, MinMaxObserver):
    pass


class HardswishInputMovingAverageMinMaxObserver(_HardswishInputGrid,
                                                MovingAverageMinMaxObserver):
    pass


class HardswishInputHistogramObserver(_HardswishInputGrid, HistogramObserver):
    pass


#: `OBSERVERS` for the tensors hard-swish reads (`annotators.annotate_hardswish_inputs`)
HARDSWISH_INPUT_OBSERVERS = {
    "minmax": HardswishInputMinMaxObserver,
    "moving_average": HardswishInputMovingAverageMinMaxObserver,
    "histogram": HardswishInputHistogramObserver,
}

#: activation dtype name -> (torch dtype, full range)
ACTIVATION_DTYPES = {
    "int8": (torch.int8, (-128, 127)),
    "uint8": (torch.uint8, (0, 255)),
}
#: TFLite 16x8 activations: symmetric, zero point 0 (see the module doc)
INT16_RANGE = (-32767, 32767)



def compile_patterns(patterns: Iterable[str], parameter: str) -> list[re.Pattern]:
    """The patterns compiled; raises ParameterError naming `parameter` (keep_float /
    int16) and the bad pattern."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ParameterError(parameter, f"{pattern!r} is not a regular expression: "
                                            f"{exc}") from None
    return compiled


@dataclass(frozen=True)
class QuantConfig:
    """What the quantizer emits; the defaults are the TFLite int8 spec.

    observer: PTQ activation observer (minmax | moving_average | histogram).
    activation_dtype: int8 (TFLite) or uint8 (the same grid, shifted by 128).
    activation_range: quantized activation range, default the dtype's full range.
    weight_range: symmetric int8 weight range; (-127, 127) by the spec, (-63, 63)
        leaves headroom for int8 kernels that accumulate pairs in int16 (x86 without VNNI).
    strict: raise on an op the quantizer does not know instead of warning.
    keep_float: regular expressions over layer / node names; the layers they match stay
        float (`edgecnn.quant.precision`; a pattern matching nothing raises at annotation).
    int16: regular expressions, the same rules; the layers they match get int16
        activations and int8 weights (TFLite 16x8). A layer both patterns match raises
        ParameterError naming int16 and keep_float, at annotation.
    How the ranges are found (PTQ with its steps, or QAT) is the recipe's
    (`edgecnn.quant.recipe`).
    """

    observer: str = "minmax"
    activation_dtype: str = "int8"
    activation_range: tuple[int, int] | None = None
    weight_range: tuple[int, int] = (-127, 127)
    strict: bool = False
    keep_float: tuple[str, ...] = ()
    int16: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("keep_float", "int16"):  # a bare string is one pattern
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        compile_patterns(self.keep_float, "keep_float")
        compile_patterns(self.int16, "int16")
        if self.observer not in OBSERVERS:
            raise EdgecnnError(f"unknown observer {self.observer!r}; known: {sorted(OBSERVERS)}")
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise EdgecnnError(f"unknown activation dtype {self.activation_dtype!r}; "
                               f"known: {sorted(ACTIVATION_DTYPES)}")
        full = ACTIVATION_DTYPES[self.activation_dtype][1]
        act = tuple(int(v) for v in (self.activation_range or full))
        if len(act) != 2 or not full[0] <= act[0] < act[1] <= full[1]:
            raise EdgecnnError(f"activation_range {self.activation_range} must be (min, max) "
                               f"inside {self.activation_dtype} {full}")
        object.__setattr__(self, "activation_range", act)
        weight = tuple(int(v) for v in self.weight_range)
        if len(weight) != 2 or weight[0] != -weight[1] or not 1 <= weight[1] <= 127:
            raise EdgecnnError(f"weight_range {self.weight_range} must be symmetric, "
                               "(-n, n) with 1 <= n <= 127 (zero point 0)")
        object.__setattr__(self, "weight_range", weight)

    @property
    def activation_torch_dtype(self) -> torch.dtype:
        return ACTIVATION_DTYPES[self.activation_dtype][0]

    def to_dict(self) -> dict:
        return {"observer": self.observer, "activation_dtype": self.activation_dtype,
                "activation_range": list(self.activation_range),
                "weight_range": list(self.weight_range), "strict": self.strict,
                "keep_float": list(self.keep_float),
                **({"int16": list(self.int16)} if self.int16 else {})}


@dataclass(frozen=True)
class Specs:
    """The QuantizationSpecs one quantizer run hands to its annotators.

    `fixed[builtin]`: the fixed output spec of a TFLite builtin whose int8 kernel
    accepts one (scale, zero point) only (`export.tflite.builtins`: LOGISTIC,
    SOFTMAX, LOG_SOFTMAX, TANH); with uint8 activations the zero point shifts by 128.
    """

    activation: QuantizationSpec
    activation16: QuantizationSpec  # the 16x8 layers' activations (`QuantConfig.int16`)
    #: `activation` with the scale raised to 3 / n: what a hard-swish reads (int8)
    hardswish_input: QuantizationSpec
    weight: QuantizationSpec
    fixed: dict[str, FixedQParamsQuantizationSpec]
    config: QuantConfig
    #: the fixed int16 output of a builtin whose 16x8 kernel checks one (LOGISTIC 1/32768, 0)
    fixed16: dict[str, FixedQParamsQuantizationSpec] = field(default_factory=dict)


def make_specs(config: QuantConfig, *, is_qat: bool) -> Specs:
    act_min, act_max = config.activation_range
    if is_qat:
        act_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
        hardswish_ctr = FakeQuantize.with_args(  # the fused op computes its own qparams
            observer=HardswishInputMovingAverageMinMaxObserver)
        weight_ctr = FakeQuantize.with_args(observer=PerChannelMinMaxObserver)
    else:
        act_ctr = OBSERVERS[config.observer]
        hardswish_ctr = HARDSWISH_INPUT_OBSERVERS[config.observer]
        weight_ctr = PerChannelMinMaxObserver
    activation = QuantizationSpec(
        dtype=config.activation_torch_dtype, quant_min=act_min, quant_max=act_max,
        qscheme=torch.per_tensor_affine, observer_or_fake_quant_ctr=act_ctr)
    activation16 = QuantizationSpec(
        dtype=torch.int16, quant_min=INT16_RANGE[0], quant_max=INT16_RANGE[1],
        qscheme=torch.per_tensor_symmetric, observer_or_fake_quant_ctr=act_ctr)
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=config.weight_range[0], quant_max=config.weight_range[1],
        qscheme=torch.per_channel_symmetric, ch_axis=0, observer_or_fake_quant_ctr=weight_ctr)
    dtype_min, dtype_max = ACTIVATION_DTYPES[config.activation_dtype][1]
    shift = dtype_min - ACTIVATION_DTYPES["int8"][1][0]
    fixed = {builtin: FixedQParamsQuantizationSpec(
        dtype=config.activation_torch_dtype, scale=scale, zero_point=zero_point + shift,
        quant_min=dtype_min, quant_max=dtype_max, qscheme=torch.per_tensor_affine)
        for builtin, (scale, zero_point) in fixed_outputs().items()}
    fixed16 = {name: FixedQParamsQuantizationSpec(
        dtype=torch.int16, scale=BUILTINS.get(name).fixed_output16[0],
        zero_point=BUILTINS.get(name).fixed_output16[1], quant_min=INT16_RANGE[0],
        quant_max=INT16_RANGE[1], qscheme=torch.per_tensor_affine)
        for name in BUILTINS if BUILTINS.get(name).fixed_output16 is not None}
    return Specs(activation=activation, activation16=activation16,
                 hardswish_input=dataclasses.replace(activation,
                                                     observer_or_fake_quant_ctr=hardswish_ctr),
                 weight=weight, fixed=fixed, config=config, fixed16=fixed16)
