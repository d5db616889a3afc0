"""How much more beam a configuration needs: events and beam-on time until its interval is narrow enough.

At the beam line the question is not "what is the cross section" but "which configuration already has enough
events, and how long until the next one does". With ``n`` events the Garwood interval ``[lo, hi]`` on the
Poisson mean (:func:`diehardlab.analysis.intervals.garwood`) is asymmetric; its relative half-width is taken
on the wider side, ``max(hi - n, n - lo) / n`` (one-sided: ``(hi - n) / n``), so "+-20 % at 95 %" means the
whole interval lies within 20 % of the measured value. That width depends on ``n`` alone, so the target is an
event count, :func:`events_for_width`.

Beam time still needed, at the group's current rate: the group gathered ``n`` events in ``beam_on_s``
seconds of beam-on time summed over its runs; its ``boards`` boards run side by side, so the events come
``boards`` times faster than one run's rate, and the missing ``N - n`` events take
``(N - n) x beam_on_s / (n x boards)`` seconds of beam-on time. With no events there is no rate: what the data
say is the upper limit reached so far (``sigma_hi_cm2``). Everything is read from a :class:`FitResult`, so
the numbers are those of ``diehard fit`` on the same files.
"""

from __future__ import annotations

import math
from typing import Any

from diehardlab.analysis import intervals

MAX_EVENTS = 10**9


def relative_half_width(n: int, confidence: float = 0.95, one_sided: bool = False) -> float:
    """The Garwood interval's half-width relative to ``n`` on its wider side (inf at zero events)."""
    if n <= 0:
        return math.inf
    lo, hi = intervals.garwood(n, confidence, one_sided)
    return (hi - n) / n if one_sided else max(hi - n, n - lo) / n


def events_for_width(target: float, confidence: float = 0.95, one_sided: bool = False) -> int:
    """The fewest events whose interval lies within +-``target`` (a fraction) of the measured value."""
    if not 0 < target < 1:
        raise ValueError(f"target relative width must be in (0, 1), got {target}")
    hi = 1
    while relative_half_width(hi, confidence, one_sided) > target:
        hi *= 2
        if hi > MAX_EVENTS:
            raise ValueError(f"+-{target:.3g} at {confidence:.3g} needs more than {MAX_EVENTS} events")
    lo = hi // 2  # relative_half_width falls with n: bisect between a count too small and one large enough
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if relative_half_width(mid, confidence, one_sided) > target:
            lo = mid
        else:
            hi = mid
    return hi


def beam_time_needed(events: int, target_events: int, beam_on_s: float, boards: int = 1) -> float | None:
    """Beam-on seconds until ``target_events``, at the rate seen so far; None when there is no rate yet."""
    if events <= 0 or not math.isfinite(beam_on_s) or beam_on_s <= 0 or boards <= 0:
        return None
    return max(0, target_events - events) * beam_on_s / (events * boards)


def progress(result: Any, target: float, classes: tuple[str, ...] = ("sdc", "due")) -> list[dict[str, Any]]:
    """One row per (group, error class) of ``result.groups`` (a :class:`~diehardlab.analysis.fit.FitResult`):
    the group's numbers as ``diehard fit`` wrote them, plus the width now, the events the target needs and the
    beam time still needed (None without events: then ``upper_limit_cm2`` is what is known)."""
    opts = result.options
    needed = events_for_width(target, opts.confidence, opts.one_sided)
    runs = result.runs
    used = runs[~runs["excluded"].astype(bool)] if len(runs) else runs
    boards = used.groupby("group")["board"].nunique().to_dict() if len(used) else {}
    rows = []
    groups = result.groups
    if groups is None or groups.empty:
        return rows
    for _, g in groups.iterrows():
        if g["error_class"] not in classes:
            continue
        n = int(g["events"])
        nb = int(boards.get(g["group"], 1)) or 1
        beam_on = float(g["beam_on_s"])
        row = {
            "group": str(g["group"]),
            "keys": {k: _plain(g.get(k)) for k in opts.group_by},
            "error_class": str(g["error_class"]),
            "events": n,
            "runs": int(g["runs"]),
            "boards": nb,
            "fluence_n_cm2": float(g["fluence_n_cm2"]),
            "beam_on_s": beam_on,
            "sigma_cm2": float(g["sigma_cm2"]),
            "sigma_lo_cm2": float(g["sigma_lo_cm2"]),
            "sigma_hi_cm2": float(g["sigma_hi_cm2"]),
            "fit": float(g["fit"]),
            "fit_lo": float(g["fit_lo"]),
            "fit_hi": float(g["fit_hi"]),
            "relative_width": relative_half_width(n, opts.confidence, opts.one_sided),
            "target_relative_width": target,
            "target_events": needed,
            "events_missing": max(0, needed - n),
            "enough": n >= needed,
            "beam_time_needed_s": beam_time_needed(n, needed, beam_on, nb),
            "upper_limit_cm2": float(g["sigma_hi_cm2"]) if n == 0 else None,
        }
        rows.append(row)
    return rows


def _plain(v: Any) -> Any:
    """pandas/numpy scalars as plain Python values (for JSON)."""
    if v is None:
        return None
    if hasattr(v, "item"):
        return v.item()
    return v
