"""Statistical fault-injection sample sizes (Leveque et al., DATE 2009), shared by the analysis and hardening.

    n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))

N the population (e.g. weights x 32 bits x 2 stuck-at values), e the error margin, t the normal quantile of
the confidence, p the estimated probability of the outcome (0.5 when unknown: the largest n). Published
tables use t rounded to two decimals (1.96 for 95 %, 2.58 for 99 %) and n rounded to the nearest integer;
with those, ResNet-20 (N = 17,174,144, e = 1 %, t = 2.58) gives n = 16,625 as in the paper.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def t_value(confidence: float, exact: bool = False) -> float:
    """Two-sided normal quantile for ``confidence``; rounded to two decimals as the published tables are."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    t = NormalDist().inv_cdf(0.5 + confidence / 2)
    return t if exact else round(t, 2)


def sample_size(population: int, error: float = 0.01, t: float = 2.58, p: float = 0.5) -> int:
    """Faults to inject from a population of ``population`` to estimate a proportion within ``error``."""
    if population < 0:
        raise ValueError(f"population must be >= 0, got {population}")
    if not 0 < error < 1:
        raise ValueError(f"error margin must be in (0, 1), got {error}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if population == 0 or p in (0.0, 1.0):
        return 0 if population == 0 else min(population, 1)
    n = population / (1 + error**2 * (population - 1) / (t**2 * p * (1 - p)))
    return min(population, math.floor(n + 0.5))


def achieved_error(population: int, n: int, t: float = 2.58, p: float = 0.5) -> float:
    """The error margin that ``n`` injections out of ``population`` give (the formula solved for e)."""
    if n <= 0 or population <= 1:
        return math.inf if n <= 0 else 0.0
    if n >= population:
        return 0.0
    return math.sqrt((population / n - 1) * t**2 * p * (1 - p) / (population - 1))
