"""Frozen records that travel with checkpoints and artifacts.

`Preprocessing` is the contract between training and every runtime: a machine
without torch reads it from an artifact and prepares images exactly as the
model saw them in training.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from edgecnn.errors import EdgecnnError

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preprocessing:
    """How raw uint8 images become the model's input tensor.

    pixels (uint8, HWC) -> resize to `input_size` (bilinear) -> x / 255
    -> (x - mean) / std per channel -> `layout`.
    """

    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "class_names", tuple(str(v) for v in self.class_names))
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise EdgecnnError(f"input_size must be (height, width), got {self.input_size}")
        if self.channels not in (1, 3):
            raise EdgecnnError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise EdgecnnError(
                f"mean and std need one value per channel ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise EdgecnnError(f"std must be positive, got {self.std}")
        if self.layout not in LAYOUTS:
            raise EdgecnnError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if len(self.class_names) < 2:
            raise EdgecnnError("a classifier needs at least two class names")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_layout(self, layout: str) -> Preprocessing:
        return Preprocessing(**{**self.to_dict(), "layout": layout})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = required - set(data)
        if missing:
            raise EdgecnnError(f"preprocessing record lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of one int8 tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArtifactMetadata:
    """What every exported artifact carries so a torch-free runtime can feed it.

    `input_quant` / `output_quant` are set when the artifact's input / output
    tensors are integers (full-int8 TFLite).
    """

    preprocessing: Preprocessing
    model: str = ""
    precision: str = "fp32"
    input_quant: QuantParams | None = None
    output_quant: QuantParams | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "preprocessing": self.preprocessing.to_dict(),
                "model": self.model,
                "precision": self.precision,
                "input_quant": self.input_quant.to_dict() if self.input_quant else None,
                "output_quant": self.output_quant.to_dict() if self.output_quant else None,
                "extra": self.extra,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ArtifactMetadata:
        data = json.loads(text)
        quant = {k: QuantParams(**data[k]) if data.get(k) else None
                 for k in ("input_quant", "output_quant")}
        return cls(
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            model=data.get("model", ""),
            precision=data.get("precision", "fp32"),
            extra=data.get("extra", {}),
            **quant,
        )
