"""Confidence intervals for the accuracy gate: how much a validation sample can tell.

Two intervals, both in plain Python (the gate runs on devices without scipy):

- `wilson_interval(k, n)`: a binomial proportion (top-1 agreement), Wilson's score
  interval (E. B. Wilson, "Probable inference, the law of succession, and statistical
  inference", JASA 22:209-212, 1927). Unlike the Wald interval it never leaves [0, 1]
  and keeps a width at k = n (agreement 100% on 50 images is not "certainly 100%").
- `paired_difference_interval(b, c, n)`: the difference of two accuracies measured on
  the same images, from the discordant pairs (b: only the first model right, c: only
  the second), Tango's asymptotic score interval (T. Tango, "Equivalence test and
  confidence interval for the difference in proportions for the paired-sample design",
  Statistics in Medicine 17:891-908, 1998), which M. W. Fagerland, S. Lydersen and
  P. Laake recommend for paired proportions ("Recommended tests and confidence intervals
  for paired binomial proportions", Statistics in Medicine 33:2850-2875, 2014). At
  difference 0 its statistic is McNemar's; with no discordant pair it still has a
  width (about 3.84 / n on the side away from 0), as the rule of three would.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from edgecnn.errors import EdgecnnError

#: Two-sided confidence of every interval the gate reports.
CONFIDENCE = 0.95


def z_value(confidence: float = CONFIDENCE) -> float:
    """The standard normal quantile of a two-sided `confidence` (0.95 -> 1.95996...)."""
    if not 0.0 < confidence < 1.0:
        raise EdgecnnError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _counts(n: int, **counts: int) -> None:
    if n < 1:
        raise EdgecnnError(f"n must be at least 1, got {n}")
    for name, value in counts.items():
        if not 0 <= value <= n:
            raise EdgecnnError(f"{name} must be in 0..n ({n}), got {value}")


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the proportion k / n (fractions in [0, 1]).

    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), Wilson (1927); equals
    `scipy.stats.binomtest(k, n).proportion_ci(confidence, method="wilson")`.
    Raises `EdgecnnError` unless 0 <= k <= n and n >= 1.
    """
    _counts(n, k=k)
    z = z_value(confidence)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def tango_statistic(delta: float, b: int, c: int, n: int) -> float:
    """Tango's score statistic for H0: p_b - p_c = delta (Tango 1998, eq. 3; Fagerland
    et al. 2014, sect. 5.4).

    (b - c - n·delta) / sqrt(n·(2·q + delta·(1 - delta))), where q is the maximum
    likelihood estimate of p_c under H0: q = (sqrt(B² - 4AC) - B) / 2A with A = 2n,
    B = -b - c + (2n - b + c)·delta, C = -c·delta·(1 - delta). Decreasing in delta;
    +-inf where the variance vanishes (delta = +-1).
    """
    a_, b_ = 2.0 * n, -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    q = (math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0)) - b_) / (2.0 * a_)
    numerator = b - c - n * delta
    variance = n * (2.0 * q + delta * (1.0 - delta))
    if variance <= 0.0:
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def _root(f, low: float, high: float) -> float:
    """Bisection of a decreasing `f` with f(low) >= 0 >= f(high), to 1e-12."""
    for _ in range(200):
        middle = (low + high) / 2.0
        if f(middle) >= 0.0:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def paired_difference_interval(b: int, c: int, n: int,
                               confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Tango's score interval of p_b - p_c on n paired trials (fractions in [-1, 1]).

    `b`: trials only the first classifier got right, `c`: only the second, `n`: all
    trials. The interval holds every delta whose score statistic (`tango_statistic`)
    lies within +-z; found by bisection. Raises `EdgecnnError` unless b, c >= 0 and
    b + c <= n >= 1.
    """
    _counts(n, b=b, c=c, discordant=b + c)
    z, point = z_value(confidence), (b - c) / n

    def lower(delta: float) -> float:
        return tango_statistic(delta, b, c, n) - z

    def upper(delta: float) -> float:
        return tango_statistic(delta, b, c, n) + z

    lo = -1.0 if lower(-1.0) < 0.0 else _root(lower, -1.0, point)
    hi = 1.0 if upper(1.0) > 0.0 else _root(upper, point, 1.0)
    return lo, hi


def images_to_decide(n: int, point: float, interval: tuple[float, float],
                     bound: float) -> int | None:
    """About how many images an interval of the same relative width would need to lie
    wholly on one side of `bound` (width shrinking as 1/sqrt(n), the rates unchanged).

    None when the point estimate sits on the bound (no sample size decides it); `n`
    itself when the interval already decides.
    """
    lo, hi = interval
    if bound < lo or bound > hi:
        return n
    gap = abs(point - bound)
    if gap == 0.0:
        return None
    half = (point - lo) if bound < point else (hi - point)
    return max(n, math.ceil(n * (half / gap) ** 2))
