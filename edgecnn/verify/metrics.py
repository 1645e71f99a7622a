"""Streaming error statistics of a dequantized int8 tensor against its fp32 reference.

All figures accumulate over batches, so a model at 224 px never holds every
tensor of every image at once.

- SQNR (signal-to-quantization-noise ratio, dB): 10 log10(sum ref^2 / sum (q - ref)^2),
  over all elements of all images (the definition of AI Edge Quantizer's and
  onnxruntime's `qdq_loss_debug` comparisons).
- cosine: <ref, q> / (|ref| |q|) over all elements of all images.
- max / mean absolute error in quantization steps: |q - ref| / scale.
- saturated: share of raw integer values at the type's limits (-128 / 127 for int8),
  not counting a limit that is the zero point (a ReLU's zeros sit at -128 by design).
- clipped: share of reference values outside the range the parameters represent
  (beyond half a step past either limit): the values saturation actually lost.
- channel SQNR: the median over channels of each channel's SQNR. One channel with a
  range far above the others dominates the tensor's SQNR while every other channel
  keeps a few quantization steps; its median shows that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise) in dB; +inf for an exact match, 0 for a zero signal with noise."""
    if noise <= 0.0:
        return float("inf")
    if signal <= 0.0:
        return 0.0
    return float(10.0 * np.log10(signal / noise))


@dataclass
class ErrorStats:
    """Accumulated comparison of one quantized tensor with its float reference."""

    scale: float
    signal: float = 0.0      # sum ref^2
    noise: float = 0.0       # sum (q - ref)^2
    dot: float = 0.0         # sum ref * q
    norm_q: float = 0.0      # sum q^2
    abs_err: float = 0.0     # sum |q - ref|
    max_err: float = 0.0     # max |q - ref|
    saturated: int = 0       # raw values at qmin or qmax
    clipped: int = 0         # reference values outside [deq(qmin), deq(qmax)] +- scale/2
    elements: int = 0
    channel_signal: np.ndarray | None = None  # per channel sum ref^2
    channel_noise: np.ndarray | None = None   # per channel sum (q - ref)^2

    def add(self, reference: np.ndarray, dequantized: np.ndarray,
            raw: np.ndarray | None = None, limits: tuple[int, int] | None = None,
            zero_point: int | None = None, channel_axis: int | None = None) -> None:
        """Add a batch: `reference` and `dequantized` float arrays of one shape; `raw`
        the integers behind `dequantized`, `limits` the type's (qmin, qmax), and
        `channel_axis` the axis of channels (None: no per-channel figures)."""
        if channel_axis is not None and np.ndim(reference) >= 2:
            axes = tuple(a for a in range(np.ndim(reference)) if a != channel_axis % np.ndim(
                reference))
            r = np.asarray(reference, np.float64)
            e = np.asarray(dequantized, np.float64) - r
            signal, noise = (r * r).sum(axis=axes), (e * e).sum(axis=axes)
            if self.channel_signal is None:
                self.channel_signal, self.channel_noise = signal, noise
            else:
                self.channel_signal, self.channel_noise = (self.channel_signal + signal,
                                                           self.channel_noise + noise)
        ref = np.asarray(reference, np.float64).reshape(-1)
        q = np.asarray(dequantized, np.float64).reshape(-1)
        err = q - ref
        self.signal += float(ref @ ref)
        self.noise += float(err @ err)
        self.dot += float(ref @ q)
        self.norm_q += float(q @ q)
        abs_err = np.abs(err)
        self.abs_err += float(abs_err.sum())
        self.max_err = max(self.max_err, float(abs_err.max(initial=0.0)))
        if raw is not None and limits is not None:
            at_limit = (raw <= limits[0]) | (raw >= limits[1])
            if zero_point is not None:
                at_limit &= raw != zero_point
                half = self.scale / 2
                low = self.scale * (limits[0] - zero_point) - half
                high = self.scale * (limits[1] - zero_point) + half
                self.clipped += int(np.count_nonzero((ref < low) | (ref > high)))
            self.saturated += int(np.count_nonzero(at_limit))
        self.elements += ref.size

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.signal, self.noise)

    @property
    def cosine(self) -> float:
        denominator = np.sqrt(self.signal * self.norm_q)
        return float(self.dot / denominator) if denominator > 0 else 1.0

    @property
    def channel_sqnr_db(self) -> float:
        if self.channel_signal is None:
            return self.sqnr_db
        return float(np.median([sqnr_db(s, n) for s, n in zip(
            self.channel_signal, self.channel_noise, strict=True)]))

    def summary(self) -> dict[str, float]:
        steps = self.scale if self.scale > 0 else 1.0
        n = max(self.elements, 1)
        return {"sqnr_db": self.sqnr_db, "cosine": self.cosine,
                "max_err_steps": self.max_err / steps, "mean_err_steps": self.abs_err / n / steps,
                "saturated": self.saturated / n, "clipped": self.clipped / n,
                "channel_sqnr_db": self.channel_sqnr_db, "noise_power": self.noise / n,
                "signal_power": self.signal / n}
