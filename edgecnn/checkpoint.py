"""fp32 checkpoints: tensors only, loaded with `weights_only=True`, plus config.json.

A checkpoint directory holds `checkpoint.pt` (a state_dict), `config.json`
(model name, model options, preprocessing record, data spec) and usually
`metrics.json`. A checkpoint is untrusted input: it never executes code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecnn.config import MAX_CLASSES, Preprocessing, loads
from edgecnn.errors import EdgecnnError, first_line
from edgecnn.models import create_model
from edgecnn.models.padding import PADDINGS
from edgecnn.util import atomic_write

WEIGHTS = "checkpoint.pt"
CONFIG = "config.json"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model and feed it."""

    model: str
    preprocessing: Preprocessing
    options: dict[str, Any] = field(default_factory=dict)
    data: str = ""

    def build(self) -> nn.Module:
        return create_model(self.model, **self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "options": self.options, "data": self.data,
                "preprocessing": self.preprocessing.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Parse and check config.json's record (types and ranges of every field)."""
        if not isinstance(data, dict):
            raise EdgecnnError(f"expected a JSON object, got {type(data).__name__}")
        for key in ("model", "preprocessing"):
            if key not in data:
                raise EdgecnnError(f"missing key {key!r}")
        if not isinstance(data["model"], str) or not data["model"].strip():
            raise EdgecnnError(f"'model' must be a model name, got {data['model']!r}"[:200])
        if not isinstance(data.get("data", ""), str):
            raise EdgecnnError("'data' must be a data spec string")
        return cls(model=data["model"], options=check_options(data.get("options", {})),
                   data=data.get("data", ""),
                   preprocessing=Preprocessing.from_dict(data["preprocessing"]))


#: The model options a checkpoint may record, with their checks (the zoo builders' keywords).
def check_options(options: Any) -> dict[str, Any]:
    """Model options from a record: known keys, right types, values in range."""
    import math

    if not isinstance(options, dict):
        raise EdgecnnError(f"'options' must be a JSON object, got {type(options).__name__}")
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key in ("num_classes", "in_channels"):
            high = 3 if key == "in_channels" else MAX_CLASSES
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not (2 if key == "num_classes" else 1) <= value <= high:
                raise EdgecnnError(f"options.{key} must be an integer in range, got {value!r}")
        elif key == "width_mult":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not 0 < value <= 8:
                raise EdgecnnError(f"options.width_mult must be in (0, 8], got {value!r}")
        elif key == "small_input":
            if not isinstance(value, bool):
                raise EdgecnnError(f"options.small_input must be true or false, got {value!r}")
        elif key == "padding":
            if value not in PADDINGS:
                raise EdgecnnError(f"options.padding must be one of {', '.join(PADDINGS)}, "
                                   f"got {value!r}"[:200])
        elif key == "bn_eps":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not 0 < value <= 0.1:
                raise EdgecnnError(f"options.bn_eps must be in (0, 0.1], got {value!r}")
        else:
            raise EdgecnnError(f"unknown model option {key!r} (known: num_classes, "
                               "in_channels, width_mult, small_input, padding, bn_eps)")
        checked[key] = value
    return checked


def save_checkpoint(directory: Path, model: nn.Module, config: ModelConfig) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / WEIGHTS) as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_write(directory / CONFIG) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2))


def read_config(directory: Path) -> ModelConfig:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise EdgecnnError(f"checkpoint directory {directory} has no {CONFIG}")
    try:
        return ModelConfig.from_dict(loads(path.read_bytes(), "the file"))
    except EdgecnnError as exc:
        raise EdgecnnError(f"{path}: malformed checkpoint config: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgecnnError(f"{path}: malformed checkpoint config ({exc})") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EdgecnnError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike
        raise EdgecnnError(f"{path}: not a tensors-only checkpoint ({first_line(exc)})") \
            from None
    if not isinstance(state, dict):
        raise EdgecnnError(f"{path}: expected a state_dict, got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise EdgecnnError(f"{path}: expected a state_dict of tensors, but {key!r} holds "
                               f"{type(value).__name__}"[:200])
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise EdgecnnError(f"{path}: {key!r} holds NaN or infinite values; the checkpoint "
                               "is broken (did training diverge?)")
    return state


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a state_dict into `model`, naming the first key that doesn't fit."""
    state = load_state_dict(Path(path))
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise EdgecnnError(f"{path}: checkpoint does not fit the model: missing key {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise EdgecnnError(
                f"{path}: checkpoint does not fit the model: {key!r} has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(value.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise EdgecnnError(
            f"{path}: checkpoint does not fit the model: unexpected key {extra[0]!r}")
    model.load_state_dict(state)
    return model


def load_checkpoint(directory: Path,
                    model_name: str | None = None) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model from `config.json` (or as `model_name`) and load its weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgecnnError(f"checkpoint directory not found: {directory}")
    config = read_config(directory)
    if model_name and model_name != config.model:
        config = ModelConfig(model_name, config.preprocessing, config.options, config.data)
    model = load_weights(config.build(), directory / WEIGHTS)
    return model.eval(), config
