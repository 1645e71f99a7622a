"""Do logits computed on an (emulated) aarch64 Pi match the x86 logits of the same artifact?

The criteria of the Raspberry Pi check (issue 8), on the same validation images:

- int8 artifacts whose output is int8 (full-int8 TFLite): every logit within
  `INT8_MAX_STEPS` (1) quantization step of the x86 value, where a step is the
  output tensor's scale;
- fp32 artifacts: every logit within `FP32_RTOL` (1e-4) relative, taken against
  the largest absolute logit of that image (a logit near zero has no meaningful
  relative error of its own);
- every artifact: the top-1 class identical on at least `MIN_TOP1_AGREEMENT`
  (99.9%) of the images.

An int8 artifact whose output is float (the QDQ ONNX model) has no single output
step to count in, so only its top-1 agreement is gated; its largest difference
is reported.

Pure numpy, no runtime: the logits come from `devtools.pi_dump` files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

INT8_MAX_STEPS = 1.0
FP32_RTOL = 1e-4
MIN_TOP1_AGREEMENT = 0.999


@dataclass(frozen=True)
class Comparison:
    """How one artifact's aarch64 logits differ from its x86 logits."""

    artifact: str
    precision: str  # "fp32" or "int8"
    images: int
    top1_agreement: float
    max_abs_diff: float
    max_rel_diff: float  # against each image's largest |logit|
    max_steps: float | None  # in output quantization steps (int8 output only)
    passed: bool
    failures: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-ready; `failures` as a list."""
        data = asdict(self)
        data["failures"] = list(self.failures)
        return data


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of images whose highest logit is the same class in `a` and `b`.

    Ties (equal logits, common with int8 outputs) break towards the lower class
    index on both sides, as `argmax` does, so identical logits always agree.
    """
    if len(a) == 0:
        return 1.0
    return float((np.argmax(a, axis=1) == np.argmax(b, axis=1)).mean())


def relative_diff(pi: np.ndarray, x86: np.ndarray) -> np.ndarray:
    """|pi - x86| per logit divided by the largest |x86 logit| of its image."""
    scale = np.max(np.abs(x86), axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    return np.abs(pi.astype(np.float64) - x86.astype(np.float64)) / scale


def compare_logits(artifact: str, pi: np.ndarray, x86: np.ndarray, *, precision: str,
                   output_step: float | None = None) -> Comparison:
    """Apply the module's criteria to the logits of one artifact (N, classes) on both sides.

    `output_step` is the output quantization scale of an int8-output artifact;
    None for a float output.
    """
    pi, x86 = np.asarray(pi, np.float64), np.asarray(x86, np.float64)
    failures: list[str] = []
    if pi.shape != x86.shape:
        return Comparison(artifact, precision, len(x86), 0.0, float("inf"), float("inf"), None,
                          False, (f"shape {pi.shape} on aarch64 but {x86.shape} on x86",))
    if not np.isfinite(pi).all():
        failures.append("non-finite logits on aarch64")
    diff = np.abs(pi - x86)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float(relative_diff(pi, x86).max()) if diff.size else 0.0
    agreement = top1_agreement(pi, x86)
    steps = None
    if output_step is not None and output_step > 0:
        steps = max_abs / output_step
        # The float logits are scale * (q - zp): allow for float rounding of that product.
        if steps > INT8_MAX_STEPS + 1e-3:
            failures.append(f"logits differ by {steps:.2f} quantization steps "
                            f"(> {INT8_MAX_STEPS:g})")
    elif precision == "fp32" and max_rel > FP32_RTOL:
        failures.append(f"logits differ by {max_rel:.2e} relative (> {FP32_RTOL:g})")
    if agreement < MIN_TOP1_AGREEMENT:
        failures.append(f"top-1 identical on {agreement:.2%} of images "
                        f"(< {MIN_TOP1_AGREEMENT:.1%})")
    return Comparison(artifact, precision, len(x86), agreement, max_abs, max_rel, steps,
                      not failures, tuple(failures))
