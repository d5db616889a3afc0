"""Exact confidence intervals for counts and proportions (FORMATS.md section 4).

- Poisson counts (beam events): the Garwood interval, from the chi-square quantiles; it stays exact at
  zero events, where the usual Gaussian bar is undefined.
- A ratio of two Poisson rates (normalised cross sections): conditioned on the total count, the first
  count is binomial, so an exact (Clopper-Pearson) interval on that proportion maps to the ratio.
- Proportions (PVF from fault injection): Clopper-Pearson or Wilson.
- The legacy bar of published GPU papers, kept for comparison only.
"""

from __future__ import annotations

import math
from functools import cache


@cache
def _stats():
    """scipy.stats, imported on first use: it takes a second or more to import, and a command that refuses its
    input (or never computes an interval) should not wait for it."""
    from scipy import stats

    return stats


def _alpha(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence


def garwood(n: int, confidence: float = 0.95, one_sided: bool = False) -> tuple[float, float]:
    """Interval on the Poisson mean given ``n`` observed events.

    Two-sided: [chi2(a/2, 2n)/2, chi2(1-a/2, 2n+2)/2]. One-sided: [0, chi2(1-a, 2n+2)/2] (an upper limit).
    """
    if n < 0:
        raise ValueError(f"event count must be >= 0, got {n}")
    a = _alpha(confidence)
    if one_sided:
        return 0.0, float(_stats().chi2.ppf(1 - a, 2 * n + 2) / 2)
    lo = 0.0 if n == 0 else float(_stats().chi2.ppf(a / 2, 2 * n) / 2)
    return lo, float(_stats().chi2.ppf(1 - a / 2, 2 * n + 2) / 2)


def legacy_error(n: int, value: float, z: float = 1.96, small_n: str = "sqrt") -> float:
    """The published GPU papers' bar, for comparison only; NaN at n = 0.

    ``small_n="sqrt"``: z*value/sqrt(n) for every n >= 1, as every bar of the UFRGS-CAROL ipdps2021 tables is
    (N below 40 included). ``small_n="n"``: z*value/n below 40, the variant FORMATS.md also lists."""
    if n <= 0:
        return math.nan
    if small_n == "n" and n < 40:
        return z * value / n
    return z * value / math.sqrt(n)


def clopper_pearson(k: int, n: int, confidence: float = 0.95, one_sided: bool = False) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` trials."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    a = _alpha(confidence)
    if one_sided:
        return 0.0, 1.0 if k == n else float(_stats().beta.ppf(1 - a, k + 1, n - k))
    lo = 0.0 if k == 0 else float(_stats().beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_stats().beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (two-sided)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = float(_stats().norm.ppf(1 - _alpha(confidence) / 2))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_interval(k: int, n: int, confidence: float = 0.95, method: str = "clopper-pearson") -> tuple[float, float]:
    if method == "clopper-pearson":
        return clopper_pearson(k, n, confidence)
    if method == "wilson":
        return wilson(k, n, confidence)
    raise ValueError(f"unknown binomial interval method {method!r}; use 'clopper-pearson' or 'wilson'")


def rate_ratio(
    n1: int, exposure1: float, n2: int, exposure2: float, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Ratio of two Poisson rates (n1/exposure1) / (n2/exposure2) with its exact conditional interval.

    Given n1 + n2, n1 is binomial with p = r1 e1 / (r1 e1 + r2 e2); the Clopper-Pearson interval on p gives
    the interval on r1/r2 = p/(1-p) * e2/e1. Returns (ratio, lo, hi); NaN/inf where the data say nothing.
    """
    if exposure1 <= 0 or exposure2 <= 0:
        return math.nan, math.nan, math.nan
    m = n1 + n2
    scale = exposure2 / exposure1
    ratio = (n1 / n2) * scale if n2 > 0 else (math.inf if n1 > 0 else math.nan)
    if m == 0:
        return ratio, 0.0, math.inf
    lo_p, hi_p = clopper_pearson(n1, m, confidence)

    def odds(p: float) -> float:
        return math.inf if p >= 1 else p / (1 - p) * scale

    return ratio, odds(lo_p), odds(hi_p)
