"""Beam time still needed: events for a target interval width, and the time at the rate seen so far.

Checked against the definition itself (a scan over n with the Garwood interval), and on the real ChipIR
sample through ``fit``, so the planning numbers are those of the analysis.
"""

from __future__ import annotations

import math

import pytest
from diehardlab.analysis import intervals, planning
from diehardlab.analysis.fit import fit

from tests.conftest import ROOT


def _scan(target: float, confidence: float, one_sided: bool) -> int:
    """The smallest n whose whole interval lies within +-target of n, by walking n upwards."""
    n = 1
    while True:
        lo, hi = intervals.garwood(n, confidence, one_sided)
        width = (hi - n) / n if one_sided else max(hi - n, n - lo) / n
        if width <= target:
            return n
        n += 1


@pytest.mark.parametrize(
    "target,confidence,one_sided", [(0.2, 0.95, False), (0.1, 0.95, False), (0.3, 0.9, False), (0.2, 0.95, True)]
)
def test_events_for_width_is_the_smallest_count_that_reaches_the_target(target, confidence, one_sided):
    n = planning.events_for_width(target, confidence, one_sided)
    assert n == _scan(target, confidence, one_sided)
    assert planning.relative_half_width(n, confidence, one_sided) <= target
    assert planning.relative_half_width(n - 1, confidence, one_sided) > target


def test_the_garwood_upper_side_decides_and_the_gaussian_rule_underestimates():
    # +-20 % at 95 %: the Gaussian rule (1.96/0.2)^2 says 96 events; the exact interval's upper side needs more.
    n = planning.events_for_width(0.2, 0.95)
    assert n > 96
    lo, hi = intervals.garwood(n, 0.95)
    assert hi - n > n - lo


def test_beam_time_needed_at_the_rate_seen_so_far():
    # 10 events in 1000 s of beam: 1 event per 100 s; 40 more take 4000 s, 2000 s with two boards side by side.
    assert planning.beam_time_needed(10, 50, 1000.0) == pytest.approx(4000.0)
    assert planning.beam_time_needed(10, 50, 1000.0, boards=2) == pytest.approx(2000.0)
    assert planning.beam_time_needed(60, 50, 1000.0) == 0.0
    assert planning.beam_time_needed(0, 50, 1000.0) is None  # no events: no rate to extrapolate
    assert planning.beam_time_needed(5, 50, math.nan) is None


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, math.nan])
def test_a_target_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="target relative width"):
        planning.events_for_width(bad)


def test_progress_rows_are_the_fit_numbers_plus_the_beam_time(beam_logs, facility_logs):
    result = fit(ROOT / "setups" / "analysis" / "chipir-2016-11.toml", [beam_logs],
                 [facility_logs / "countlog-2016-11-24.txt"], jobs=1)  # fmt: skip
    rows = planning.progress(result, 0.2)
    g = result.groups.set_index(["group", "error_class"])
    assert rows and {r["error_class"] for r in rows} == {"sdc", "due"}
    needed = planning.events_for_width(0.2, 0.95)
    for r in rows:
        ref = g.loc[(r["group"], r["error_class"])]
        assert r["events"] == ref["events"] and r["fluence_n_cm2"] == ref["fluence_n_cm2"]
        assert (r["sigma_lo_cm2"], r["sigma_hi_cm2"]) == (ref["sigma_lo_cm2"], ref["sigma_hi_cm2"])
        assert r["target_events"] == needed
        if r["events"]:
            assert r["beam_time_needed_s"] == pytest.approx((needed - r["events"]) * ref["beam_on_s"] / r["events"])
            assert r["upper_limit_cm2"] is None
        else:
            assert r["beam_time_needed_s"] is None and r["upper_limit_cm2"] == ref["sigma_hi_cm2"]
    sdc = next(r for r in rows if r["error_class"] == "sdc")
    assert sdc["events"] == 2 and not sdc["enough"]  # the 2016 Darknet run's two SDCs


def test_stats_target_prints_what_the_dashboard_shows(capsys):
    from diehardlab.analysis.stats import main

    assert main(["target", "0.2", "--events", "2", "--beam-on", "79.5"]) == 0
    out = capsys.readouterr().out
    need = planning.events_for_width(0.2, 0.95)
    assert f": {need} events" in out
    assert f"{need - 2} more events, {planning.beam_time_needed(2, need, 79.5):.6g} s of beam" in out
