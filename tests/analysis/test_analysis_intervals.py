"""Interval formulas against scipy routes independent of the ones the code uses, and published values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diehardlab.analysis import intervals
from scipy.special import gammaincinv
from scipy.stats import binomtest, poisson


@pytest.mark.parametrize("n", [*range(0, 30), 40, 57, 100, 250, 1000, 5000])
@pytest.mark.parametrize("conf", [0.68, 0.9, 0.95, 0.99])
def test_garwood_matches_gamma_quantiles(n, conf):
    a = 1 - conf
    lo, hi = intervals.garwood(n, conf)
    assert hi == pytest.approx(gammaincinv(n + 1, 1 - a / 2), rel=1e-9)
    assert lo == (0.0 if n == 0 else pytest.approx(gammaincinv(n, a / 2), rel=1e-9))
    # the defining property: P(X >= n | lo) = a/2 and P(X <= n | hi) = a/2
    assert poisson.cdf(n, hi) == pytest.approx(a / 2, rel=1e-6)
    if n > 0:
        assert poisson.sf(n - 1, lo) == pytest.approx(a / 2, rel=1e-6)


def test_garwood_published_values():
    assert intervals.garwood(0) == (0.0, pytest.approx(3.689, abs=5e-4))
    lo, hi = intervals.garwood(10)
    assert (lo, hi) == (pytest.approx(4.795, abs=5e-4), pytest.approx(18.39, abs=5e-3))


@pytest.mark.parametrize("n", [0, 1, 5, 20])
def test_one_sided_upper_limit(n):
    lo, hi = intervals.garwood(n, 0.95, one_sided=True)
    assert lo == 0.0
    assert poisson.cdf(n, hi) == pytest.approx(0.05, rel=1e-6)
    assert intervals.garwood(0, 0.95, one_sided=True)[1] == pytest.approx(-math.log(0.05), rel=1e-9)  # 2.996


def test_garwood_coverage_over_2000_simulated_campaigns():
    """A campaign of 8 runs with known cross section; the 95 % interval must cover it 93-97 % of the time."""
    rng = np.random.default_rng(20261130)
    sigma_true = 2.0e-10  # cm^2
    run_fluence = rng.uniform(1e10, 3e10, size=8)  # n/cm^2 per run; 30-ish expected events in all
    covered = 0
    for _ in range(2000):
        n = int(rng.poisson(sigma_true * run_fluence).sum())
        lo, hi = intervals.garwood(n, 0.95)
        f = run_fluence.sum()
        covered += lo / f <= sigma_true <= hi / f
    assert 0.93 <= covered / 2000 <= 0.97


def test_legacy_error_bar():
    assert math.isnan(intervals.legacy_error(0, 0.0))
    # every bar of the ipdps2021 tables is 1.96 x value / sqrt(N), N below 40 included
    assert intervals.legacy_error(10, 5.0) == pytest.approx(1.96 * 5.0 / math.sqrt(10))
    assert intervals.legacy_error(10, 5.0, small_n="n") == pytest.approx(1.96 * 5.0 / 10)
    assert intervals.legacy_error(100, 5.0) == pytest.approx(1.96 * 5.0 / 10)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 250), (500, 1000)])
def test_clopper_pearson_matches_scipy_binomtest(k, n):
    ref = binomtest(k, n).proportion_ci(0.95, method="exact")
    lo, hi = intervals.clopper_pearson(k, n, 0.95)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 250)])
def test_wilson_matches_scipy_binomtest(k, n):
    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    lo, hi = intervals.wilson(k, n, 0.95)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def test_rate_ratio_exact_interval():
    # equal counts and exposures: ratio 1, symmetric on the log scale
    r, lo, hi = intervals.rate_ratio(20, 1e10, 20, 1e10)
    assert r == 1.0
    assert lo * hi == pytest.approx(1.0, rel=1e-9)
    # exposure scales the ratio: 20 events on half the fluence is twice the rate
    r, lo2, hi2 = intervals.rate_ratio(20, 5e9, 20, 1e10)
    assert r == pytest.approx(2.0) and lo2 == pytest.approx(2 * lo) and hi2 == pytest.approx(2 * hi)
    # the binomial route by hand: p = 20/40 with the exact interval of scipy
    ci = binomtest(20, 40).proportion_ci(0.95, method="exact")
    assert lo == pytest.approx(ci.low / (1 - ci.low))
    # zero events in the group: lower bound 0, finite upper bound
    r, lo, hi = intervals.rate_ratio(0, 1e10, 12, 1e10)
    assert r == 0.0 and lo == 0.0 and 0 < hi < 1


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="confidence"):
        intervals.garwood(3, 1.5)
    with pytest.raises(ValueError, match="k <= n"):
        intervals.clopper_pearson(11, 10)
