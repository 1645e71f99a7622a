"""How a model is quantized: the recipe object, `PTQ(...)` or `QAT(...)`.

`edgecnn.quant.quantize(model, x, recipe, train_data=...)` takes one of them; each
holds only the options its method uses, so no option is silently dropped (a QAT
epoch count cannot reach PTQ). What the quantizer emits (the TFLite int8 spec,
float and int16 layers) is the separate `QuantConfig`, shared by both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.flags import check_fields
from edgecnn.train import TrainConfig


@dataclass(frozen=True)
class PTQ:
    """Post-training quantization (calibration).

    Activation ranges are observed on `calib_batches` batches of `batch_size` training
    inputs in an order drawn from `seed` (None: the checkpoint's training seed in
    `quantize_checkpoint`, else 0), then the program is converted. Optional steps of
    Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
    Correction" (ICCV 2019): `cle`, cross-layer equalization of conv pairs before
    calibration (`edgecnn.quant.equalize`); `bias_correction`, the per-channel mean
    error of the int8 weights subtracted after it (`edgecnn.quant.bias_correction`).
    Raises EdgecnnError for a count below 1.
    """

    calib_batches: int = 32
    batch_size: int = 64
    seed: int | None = None
    cle: bool = False
    bias_correction: bool = False
    method: ClassVar[str] = "ptq"

    def __post_init__(self) -> None:
        check_fields(calib_batches=self.calib_batches, batch_size=self.batch_size)

    @property
    def steps(self) -> tuple[str, ...]:
        """The PTQ steps asked for ("cle", "bias_correction")."""
        return tuple(name for name in ("cle", "bias_correction") if getattr(self, name))

    def to_dict(self) -> dict:
        return asdict(self)


#: QAT's fine-tuning schedule: a few epochs at a small learning rate, no weight decay
QAT_SCHEDULE = TrainConfig(epochs=3, lr=3e-5, weight_decay=0.0)


@dataclass(frozen=True)
class QAT:
    """Quantization-aware training: fake-quantized fine-tuning on `train` (an fp32
    `TrainConfig`: epochs, lr, batch size, optimizer, augmentation, seed; default
    `QAT_SCHEDULE`), BatchNorm statistics frozen after `freeze_bn_fraction` of the
    epochs and the observers' ranges after `freeze_observer_fraction` (1.0: never; BN
    0.0: from the start, so training sees exactly the folded, deployed function).
    Raises EdgecnnError for no epochs, a head-only phase (`freeze_epochs`: QAT trains
    every layer) or a fraction out of range.
    """

    train: TrainConfig = field(default=QAT_SCHEDULE)
    freeze_bn_fraction: float = 0.5
    freeze_observer_fraction: float = 0.67
    method: ClassVar[str] = "qat"
    steps: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise EdgecnnError(f"QAT's train must be a TrainConfig, got "
                               f"{type(self.train).__name__}")
        if self.train.epochs < 1:
            raise ParameterError("train.epochs", f"must be at least 1 for QAT, got "
                                                 f"{self.train.epochs}", flag="--qat-epochs")
        if self.train.freeze_epochs:
            raise EdgecnnError("freeze_epochs does not apply to QAT: it trains every layer")
        check_fields(freeze_bn_fraction=self.freeze_bn_fraction,
                  freeze_observer_fraction=self.freeze_observer_fraction)

    def freeze_epoch(self, fraction: float) -> int:
        """First (0-based) epoch run frozen; `epochs` means never."""
        return min(self.train.epochs, round(fraction * self.train.epochs))

    def to_dict(self) -> dict:
        schedule = {k: v for k, v in asdict(self.train).items()
                    if k not in ("freeze_epochs", "backbone_lr_factor")}
        return {**schedule, "freeze_bn_fraction": self.freeze_bn_fraction,
                "freeze_observer_fraction": self.freeze_observer_fraction}


Recipe = PTQ | QAT
