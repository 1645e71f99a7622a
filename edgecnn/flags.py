"""Range checks of numeric command-line flags and config fields, at the boundary.

`check(flag, value)` raises `EdgecnnError` naming the flag unless the value
is finite and inside the range `RANGES` gives it; the CLI calls it for every
numeric flag before any work starts (NaN and inf never switch a bound off).
Library dataclasses check their own fields with the same table via `check`.
"""

from __future__ import annotations

import math
import numbers

from edgecnn.errors import EdgecnnError

#: flag -> (low, high, low_inclusive, high_inclusive, integer)
RANGES: dict[str, tuple[float, float, bool, bool, bool]] = {
    "--epochs": (0, 100_000, True, True, True),
    "--freeze-epochs": (0, 100_000, True, True, True),
    "--backbone-lr-factor": (0.0, 1.0, False, True, False),
    "--bn-eps": (0.0, 0.1, False, True, False),
    "--qat-epochs": (1, 100_000, True, True, True),
    "--batch-size": (1, 65_536, True, True, True),
    "--batch": (1, 65_536, True, True, True),
    "--lr": (0.0, 10.0, False, True, False),
    "--label-smoothing": (0.0, 1.0, True, False, False),
    "--input-size": (8, 8192, True, True, True),
    "--resize-size": (8, 8192, True, True, True),
    "--width-mult": (0.0, 8.0, False, True, False),
    "--seed": (0, 2**32 - 1, True, True, True),
    "--threads": (1, 1024, True, True, True),
    "--warmup": (0, 1_000_000, True, True, True),
    "--runs": (1, 10_000_000, True, True, True),
    "--seconds": (0.0, 86_400.0, False, True, False),
    "--max-drop": (0.0, 100.0, True, True, False),
    "--min-agreement": (0.0, 1.0, True, True, False),
    "--calib-batches": (1, 1_000_000, True, True, True),
    "--num-classes": (2, 100_000, True, True, True),
    "--in-channels": (1, 3, True, True, True),
    "--top": (1, 100_000, True, True, True),
}


def check(flag: str, value: object) -> None:
    """Raise naming `flag` unless `value` is None or a finite number in the flag's range."""
    if value is None:
        return
    low, high, low_in, high_in, integer = RANGES[flag]
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)) or (integer and float(value) != int(value)):
        raise EdgecnnError(f"{flag} must be {kind}, got {value!r}")
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    if not (above and below):
        interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        raise EdgecnnError(f"{flag} must be in {interval}, got {value:g}")


def check_all(**values: object) -> None:
    """`check_all(max_drop=1.0, lr=...)`: each keyword is a flag name without dashes."""
    for name, value in values.items():
        check("--" + name.replace("_", "-"), value)
