"""Frozen records that travel with checkpoints and artifacts.

`Preprocessing` is the contract between training and every runtime: a machine
without torch reads it from an artifact and prepares images exactly as the
model saw them in training.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgecnn.errors import EdgecnnError

LAYOUTS = ("NCHW", "NHWC")
#: How an image reaches `input_size`: "whole" resizes the whole image to it (aspect ratio
#: not kept); "shorter" resizes the shorter side to `resize_size` (aspect ratio kept) and
#: cuts the centre `input_size` crop, as ImageNet evaluation does (torchvision's
#: `Resize(resize_size)` + `CenterCrop(input_size)`).
RESIZE_MODES = ("whole", "shorter")
#: Pillow's resampling filters, antialiased when downscaling (their support grows with
#: the scale factor).
INTERPOLATIONS = ("bilinear", "bicubic")
PRECISIONS = ("fp32", "int8")
#: Bounds checked before anything is allocated from a record (pixels per side, classes,
#: characters of one record).
MAX_INPUT_SIZE = 8192
MAX_CLASSES = 100_000
MAX_RECORD_CHARS = 16 * 2**20
#: Integer ranges of the quantized I/O types a record may name.
QUANT_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def loads(text: str | bytes, source: str, max_chars: int = MAX_RECORD_CHARS) -> Any:
    """Parse JSON text from a file or an artifact, with one-line errors naming `source`.

    Refuses non-UTF-8 bytes, text longer than `max_chars`, nesting too deep for the
    parser (RecursionError), and the non-standard constants NaN / Infinity.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EdgecnnError(f"{source}: not UTF-8 text ({exc.reason} at byte "
                               f"{exc.start})") from None
    if len(text) > max_chars:
        raise EdgecnnError(f"{source}: {len(text)} characters, more than the {max_chars} "
                           "a record may have")

    def constant(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    try:
        return json.loads(text, parse_constant=constant)
    except RecursionError:
        raise EdgecnnError(f"{source}: JSON nested too deeply") from None
    except ValueError as exc:
        raise EdgecnnError(f"{source}: not valid JSON ({exc})") from None


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise EdgecnnError(f"{name} must be an integer, got {value!r}"[:200])
    if not low <= int(value) <= high:
        raise EdgecnnError(f"{name} must be in {low}..{high}, got {value}")
    return int(value)


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)):
        raise EdgecnnError(f"{name} must be a finite number, got {value!r}"[:200])
    return float(value)


def _sequence(value: Any, name: str, max_len: int) -> list:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") \
            or not hasattr(value, "__iter__"):
        raise EdgecnnError(f"{name} must be a list, got {type(value).__name__}")
    if len(value) > max_len:
        raise EdgecnnError(f"{name} has {len(value)} entries, more than {max_len}")
    return list(value)


def _mapping(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise EdgecnnError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Preprocessing:
    """How raw uint8 images become the model's input tensor.

    pixels (uint8, HWC, any size) -> Pillow resize with `interpolation`: the whole image
    to `input_size` (`resize="whole"`), or the shorter side to `resize_size` then the
    centre `input_size` crop (`resize="shorter"`) -> uint8 crop -> x / 255 -> channels
    converted (grey repeated, or RGB to luma) -> (x - mean) / std per channel -> `layout`.
    A record without `resize`, `resize_size` or `interpolation` (written before they
    existed) means what it meant then: the whole image, bilinear.
    """

    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    layout: str = "NCHW"
    resize: str = "whole"
    resize_size: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        size = _sequence(self.input_size, "input_size", 2)
        if len(size) != 2:
            raise EdgecnnError(f"input_size must be (height, width), got {self.input_size}")
        object.__setattr__(self, "input_size", tuple(
            _integer(v, "input_size", 1, MAX_INPUT_SIZE) for v in size))
        object.__setattr__(self, "channels", _integer(self.channels, "channels", 1, 3))
        object.__setattr__(self, "mean", tuple(
            _real(v, "mean") for v in _sequence(self.mean, "mean", 3)))
        object.__setattr__(self, "std", tuple(
            _real(v, "std") for v in _sequence(self.std, "std", 3)))
        names = _sequence(self.class_names, "class_names", MAX_CLASSES)
        if any(not isinstance(n, (str, numbers.Number)) or isinstance(n, bool) for n in names):
            raise EdgecnnError("class_names must be a list of strings")
        object.__setattr__(self, "class_names", tuple(str(v) for v in names))
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
        if self.resize not in RESIZE_MODES:
            raise EdgecnnError(f"resize must be one of {', '.join(RESIZE_MODES)}, got "
                               f"{self.resize!r}"[:200])
        if self.interpolation not in INTERPOLATIONS:
            raise EdgecnnError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                               f"{self.interpolation!r}"[:200])
        if self.resize == "shorter":
            if self.resize_size is None:
                raise EdgecnnError("resize 'shorter' needs resize_size (the shorter side's "
                                   "length before the centre crop)")
            size = _integer(self.resize_size, "resize_size", 1, MAX_INPUT_SIZE)
            if size < max(self.input_size):
                raise EdgecnnError(f"resize_size {size} is smaller than the crop "
                                   f"{self.input_size[0]}x{self.input_size[1]}")
            object.__setattr__(self, "resize_size", size)
        elif self.resize_size is not None:
            raise EdgecnnError("resize_size applies only to resize 'shorter'")

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
        data = _mapping(data, "preprocessing")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = required - set(data)
        if missing:
            raise EdgecnnError(f"preprocessing record lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        return cls.from_dict(loads(text, "preprocessing record"))


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of one int8 tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    @classmethod
    def from_dict(cls, data: Any, name: str) -> QuantParams:
        """Parse a record's entry: scale finite and > 0, zero point in the dtype's range."""
        data = _mapping(data, name)
        unknown = set(data) - {"scale", "zero_point", "dtype"}
        if unknown or not {"scale", "zero_point"} <= set(data):
            raise EdgecnnError(f"{name} needs scale and zero_point (and optionally dtype), "
                               f"got keys {sorted(data)[:5]}")
        dtype = data.get("dtype", "int8")
        if dtype not in QUANT_RANGES:
            raise EdgecnnError(f"{name}.dtype must be one of {', '.join(QUANT_RANGES)}, "
                               f"got {dtype!r}"[:200])
        scale = _real(data["scale"], f"{name}.scale")
        if scale <= 0:
            raise EdgecnnError(f"{name}.scale must be > 0, got {scale}")
        return cls(scale, _integer(data["zero_point"], f"{name}.zero_point",
                                   *QUANT_RANGES[dtype]), dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The key the ArtifactMetadata record is stored under: ONNX metadata_props, the TFLite
#: Metadata table, the .pt2's extra files.
METADATA_KEY = "edgecnn"


def sidecar_path(path: str | Path) -> Path:
    """Where an artifact's metadata JSON goes when not embedded: `model.tflite` ->
    `model.tflite.json`."""
    return Path(f"{path}.json")


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

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise EdgecnnError(f"model must be a string, got {type(self.model).__name__}")
        if not isinstance(self.precision, str) or not 0 < len(self.precision) <= 32:
            raise EdgecnnError(f"precision must be a short string such as "
                               f"{' or '.join(PRECISIONS)}, got {self.precision!r}"[:200])
        _mapping(self.extra, "extra")

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "metadata") -> ArtifactMetadata:
        """Parse and check a record: types, ranges and sizes (see `Preprocessing`);
        raises `EdgecnnError` naming the first field at fault."""
        data = _mapping(loads(text, source), "the record")
        if "preprocessing" not in data:
            raise EdgecnnError("the record has no 'preprocessing' entry")
        quant = {k: QuantParams.from_dict(data[k], k) if data.get(k) is not None else None
                 for k in ("input_quant", "output_quant")}
        return cls(
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            model=data.get("model", ""),
            precision=data.get("precision", "fp32"),
            extra=data.get("extra", {}),
            **quant,
        )
