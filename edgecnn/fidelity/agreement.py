"""How closely two runtimes' int8 outputs agree, and where they first part."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """Two runtimes' outputs for the same images, in output quantization steps.

    top1: share of images with the same argmax; within_one: share of outputs at
    most one step apart; max_steps: the largest difference.
    """

    images: int
    top1: float
    within_one: float
    max_steps: int

    def to_dict(self) -> dict:
        return {"images": self.images, "top1": self.top1, "within_one": self.within_one,
                "max_steps": self.max_steps}


def agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    """`a`, `b`: (images, classes) int8 outputs (or float outputs already divided by the
    output scale and rounded)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"outputs of shapes {a.shape} and {b.shape}: need equal (N, classes)")
    steps = np.abs(a - b)
    return Agreement(len(a), float(np.mean(a.argmax(1) == b.argmax(1))),
                     float(np.mean(steps <= 1)), int(steps.max()))


@dataclass(frozen=True)
class TensorDifference:
    """One quantized tensor in two runtimes: how many values differ, by how much."""

    key: str
    position: int
    elements: int
    differing: int
    max_steps: int

    @property
    def rate(self) -> float:
        return self.differing / self.elements if self.elements else 0.0


def differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                keys: list[str]) -> list[TensorDifference]:
    """Per key present in both (in `keys` order): values that differ between a and b."""
    rows = []
    for position, key in enumerate(keys):
        if key not in a or key not in b:
            continue
        x, y = a[key].astype(np.int64), b[key].astype(np.int64).reshape(a[key].shape)
        steps = np.abs(x - y)
        rows.append(TensorDifference(key, position, int(steps.size), int((steps > 0).sum()),
                                     int(steps.max()) if steps.size else 0))
    return rows


def first_difference(rows: list[TensorDifference]) -> TensorDifference | None:
    """The earliest tensor in which the two runtimes differ, or None."""
    return next((row for row in rows if row.differing), None)
