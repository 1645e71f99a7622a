"""Range checks of numeric command-line flags and config fields, in one table.

`check(parameter, value)` raises `ParameterError` naming the parameter unless the value
is None or a number of the right kind (bools are not numbers), finite, inside the range
`RANGES` gives it. The CLI calls it for every numeric flag before any work starts (NaN
and inf never switch a bound off), shown as `--max-drop must be ...`; the library's
config dataclasses (`TrainConfig`, `Bounds`, `BenchConfig`, `PTQ`, `QAT`, `Training`)
call it in `__post_init__` for their fields, shown as `max_drop must be ...`.
"""

from __future__ import annotations

import math
import numbers

from edgecnn.errors import ParameterError

#: parameter -> (low, high, low_inclusive, high_inclusive, integer); the CLI flag is the
#: parameter with dashes (`errors.flag`)
RANGES: dict[str, tuple[float, float, bool, bool, bool]] = {
    "epochs": (0, 100_000, True, True, True),
    "freeze_epochs": (0, 100_000, True, True, True),
    "backbone_lr_factor": (0.0, 1.0, False, True, False),
    "bn_eps": (0.0, 0.1, False, True, False),
    "qat_epochs": (1, 100_000, True, True, True),
    "batch_size": (1, 65_536, True, True, True),
    "batch": (1, 65_536, True, True, True),
    "lr": (0.0, 10.0, False, True, False),
    "weight_decay": (0.0, 10.0, True, True, False),
    "label_smoothing": (0.0, 1.0, True, False, False),
    "input_size": (8, 8192, True, True, True),
    "resize_size": (8, 8192, True, True, True),
    "width_mult": (0.0, 8.0, False, True, False),
    "seed": (0, 2**32 - 1, True, True, True),
    "threads": (1, 1024, True, True, True),
    "warmup": (0, 1_000_000, True, True, True),
    "runs": (1, 10_000_000, True, True, True),
    "seconds": (0.0, 86_400.0, False, True, False),
    "max_drop": (0.0, 100.0, True, True, False),
    "min_agreement": (0.0, 1.0, True, True, False),
    "calib_batches": (1, 1_000_000, True, True, True),
    "freeze_bn_fraction": (0.0, 1.0, True, True, False),
    "freeze_observer_fraction": (0.0, 1.0, False, True, False),  # ranges need data first
    "num_classes": (2, 100_000, True, True, True),
    "in_channels": (1, 3, True, True, True),
    "top": (1, 100_000, True, True, True),
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check(parameter: str, value: object, *, optional: bool = True) -> None:
    """Raise ParameterError naming `parameter` unless `value` is a finite number of its kind
    in its range (or None when `optional`: a flag not given):
    `epochs must be an integer in [0, 100000], got 2.5`."""
    if value is None and optional:
        return
    low, high, low_in, high_in, integer = RANGES[parameter]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)) or (integer and float(value) != int(value)):
        inside = False
    else:
        inside = ((value >= low) if low_in else (value > low)) \
            and ((value <= high) if high_in else (value < high))
    if not inside:
        interval = (f"{'[' if low_in else '('}{_number(low)}, {_number(high)}"
                    f"{']' if high_in else ')'}")
        kind = "an integer" if integer else "a finite number"
        raise ParameterError(parameter, f"must be {kind} in {interval}, got {value!r}")


def check_all(**values: object) -> None:
    """`check_all(max_drop=1.0, lr=None, ...)`: `check` of each keyword, None allowed (the
    CLI's flags not given, a config's optional fields)."""
    for name, value in values.items():
        check(name, value)


def check_fields(**values: object) -> None:
    """`check_fields(max_drop=1.0, ...)`: `check` of each keyword, None refused (a config
    dataclass's required fields)."""
    for name, value in values.items():
        check(name, value, optional=False)
