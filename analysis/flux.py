"""Facility beam logs (FORMATS.md section 3) and the fluence a run received.

ChipIR count logs (whitespace or ``;`` separated, first line ``Data From ChipIR``) and LANSCE logs
(``YYYY-MM-DD HH:MM:SS,mmm <cumulative count>``) both give a cumulative counter against time. The flux at
a board is the counter's rate x the facility's counts-to-flux factor x the board position's attenuation;
the fluence over a time window is the integral of that flux, with the counter interpolated linearly
between rows. Intervals where the counter stalls (or trickles below ``off_fraction`` of the median rate)
are beam-off time.

Malformed rows are counted and reported with file:line, never fatal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path

import numpy as np

from diehardlab.errors import DataError

_CHIPIR_ROW = re.compile(
    r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})[\s;]+(\d{1,2}):(\d{2}):(\d{2})[\s;]+(\.\d+|\d*\.\d+|\d+)"
    r"[\s;]+(\d+)[\s;]+(\d+)[\s;]+(\d+)[\s;]+(\d+)(?:[\s;]+([-+\d.eE]+))?(?:[\s;]+([-+\d.eE]+))?[\s;]*$"
)
_LANSCE_ROW = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:[,.](\d{1,6}))?[\s;,]+(\d+(?:\.\d*)?)\s*$"
)


@dataclass
class FluxLog:
    """A facility log as arrays: ``t`` UTC epoch seconds (increasing), ``counts`` cumulative."""

    path: str
    kind: str  # "chipir" or "lansce"
    t: np.ndarray
    counts: np.ndarray
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line number, text)
    resets: int = 0  # counter went backwards (facility restart): that interval counts zero
    duplicates: int = 0  # rows with a time stamp seen before (merged files), dropped

    @property
    def start(self) -> float:
        return float(self.t[0])

    @property
    def end(self) -> float:
        return float(self.t[-1])

    @property
    def edge_slack_s(self) -> float:
        """How far a run may reach past the first or last row and still count as covered (extrapolated with
        that edge interval's rate): two row intervals, at least 2 s. Rows fall on the facility's grid and a
        #BEGIN has whole seconds, so a run that started with the log can begin a fraction of a row before it."""
        return max(2.0, 2.0 * float(np.median(np.diff(self.t))))

    def covers(self, start: float, end: float) -> bool:
        slack = self.edge_slack_s
        return self.start - slack <= start and self.end + slack >= end

    def notes(self, limit: int = 5) -> list[str]:
        out = [f"{self.path}:{ln}: malformed flux row ignored: {text[:80]!r}" for ln, text in self.malformed[:limit]]
        if len(self.malformed) > limit:
            out.append(f"{self.path}: {len(self.malformed) - limit} more malformed flux rows ignored")
        if self.duplicates:
            out.append(f"{self.path}: {self.duplicates} rows repeat an earlier time stamp (merged file): dropped")
        if self.resets:
            out.append(f"{self.path}: the counter went backwards {self.resets} times (counted as zero there)")
        return out


def _epoch(vals: Sequence[int], micro: int, zone: tzinfo) -> float:
    return datetime(*vals, microsecond=micro, tzinfo=zone).timestamp()  # type: ignore[misc]


def detect_kind(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            s = line.strip()
            if not s:
                continue
            if s.lower().startswith("data from chipir") or _CHIPIR_ROW.match(s):
                return "chipir"
            if _LANSCE_ROW.match(s):
                return "lansce"
            break
    raise DataError(
        f"{path}: not a facility log this tool reads (expected a ChipIR count log starting 'Data From ChipIR' "
        "or LANSCE rows 'YYYY-MM-DD HH:MM:SS,mmm <count>')"
    )


def read_flux_log(path: str | Path, zone: tzinfo = timezone.utc, kind: str | None = None) -> FluxLog:
    """Read a ChipIR or LANSCE log; times are read on ``zone`` (the facility clock) and stored as UTC."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: flux log not found; give the facility's count log with --flux")
    kind = kind or detect_kind(path)
    ts: list[float] = []
    cs: list[float] = []
    bad: list[tuple[int, str]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.lower().startswith("data from"):  # merged files repeat the header
                continue
            try:
                if kind == "chipir":
                    m = _CHIPIR_ROW.match(s)
                    if not m:
                        raise ValueError
                    d, mo, y, hh, mi, ss, frac = m.groups()[:7]
                    micro = round(float("0" + frac if frac.startswith(".") else frac) % 1 * 1e6)
                    t = _epoch((int(y), int(mo), int(d), int(hh), int(mi), int(ss)), min(micro, 999_999), zone)
                    c = float(m.group(11))  # the fission counter
                else:
                    m = _LANSCE_ROW.match(s)
                    if not m:
                        raise ValueError
                    g = m.groups()
                    micro = int((g[6] or "0").ljust(6, "0"))
                    t = _epoch(tuple(int(x) for x in g[:6]), micro, zone)
                    c = float(g[7])
            except ValueError:
                bad.append((lineno, s))
                continue
            ts.append(t)
            cs.append(c)
    if len(ts) < 2:
        raise DataError(f"{path}: fewer than two readable {kind} rows; is this the facility's count log?")
    # Merged files may hold overlapping pieces: order by time, keep the first row of each time stamp.
    t_arr, c_arr = np.asarray(ts), np.asarray(cs)
    order = np.argsort(t_arr, kind="stable")
    t_arr, c_arr = t_arr[order], c_arr[order]
    keep = np.r_[True, np.diff(t_arr) > 0]
    dropped = int(np.count_nonzero(~keep))
    t_arr, c_arr = t_arr[keep], c_arr[keep]
    resets = int(np.count_nonzero(np.diff(c_arr) < 0))
    return FluxLog(str(path), kind, t_arr, c_arr, bad, resets, dropped)


def factor_schedule(flux_factor: float | None, dated: Sequence[tuple[float, float]] = ()):
    """A function from interval start times (UTC epoch) to the counts-to-flux factor in force then."""
    dated = sorted(dated)
    if not dated:
        if flux_factor is None:
            raise DataError("no counts-to-flux factor: set [facility] flux_factor in the campaign file")
        return lambda t: np.full(len(t), float(flux_factor))
    since = np.array([s for s, _ in dated])
    values = np.array([v for _, v in dated])
    before = float(flux_factor) if flux_factor is not None else float("nan")  # before the first date: unknown

    def fn(t: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(since, t, side="right") - 1
        out = values[np.clip(idx, 0, None)]
        return np.where(idx < 0, before, out)

    return fn


@dataclass
class Exposure:
    """What a run received from one flux log."""

    fluence: float  # n/cm^2 at the board
    beam_on_s: float
    beam_off_s: float
    window_s: float  # the counted window (inside the beam windows, when given)
    covered: bool  # the log covers the whole run
    gap_s: float  # time inside the run in log intervals longer than max_gap_s (interpolated)

    @property
    def mean_flux(self) -> float:
        return self.fluence / self.window_s if self.window_s > 0 else math.nan


def _typical_rate(log: FluxLog) -> float:
    dc = np.diff(log.counts)
    dt = np.diff(log.t)
    r = dc[dc > 0] / dt[dc > 0]
    return float(np.median(r)) if r.size else 0.0


def exposure(
    log: FluxLog,
    start: float,
    end: float,
    factor,
    attenuation: float = 1.0,
    beam_windows: Sequence[tuple[float, float]] = (),
    off_fraction: float = 0.1,
    max_gap_s: float = 60.0,
) -> Exposure:
    """Integrate the flux of ``log`` over [start, end] (UTC epoch seconds), inside ``beam_windows`` if given."""
    covered = log.covers(start, end)
    slack = log.edge_slack_s
    pieces = [(start, end)]
    if beam_windows:
        pieces = [(max(start, a), min(end, b)) for a, b in beam_windows if min(end, b) > max(start, a)]
    fluence = on = off = gap = window = 0.0
    typical = _typical_rate(log)
    for a, b in pieces:
        window += b - a
        i0 = max(0, int(np.searchsorted(log.t, a, side="right")) - 1)
        i1 = min(len(log.t) - 1, int(np.searchsorted(log.t, b, side="left")))
        if i1 <= i0:
            continue
        t0, t1 = log.t[i0:i1], log.t[i0 + 1 : i1 + 1]
        dc = np.clip(np.diff(log.counts[i0 : i1 + 1]), 0, None)
        dt = t1 - t0
        lo, hi = t0.copy(), t1.copy()
        if i0 == 0 and log.t[0] - slack <= a < log.t[0]:
            lo[0] = a  # extrapolate the first interval back to the run's start
        if i1 == len(log.t) - 1 and log.t[-1] < b <= log.t[-1] + slack:
            hi[-1] = b  # and the last one forward to its end
        ov = np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None)
        rate = dc / dt
        f = factor(t0)
        fluence += float(np.sum(rate * ov * f)) * attenuation
        is_off = (dc <= 0) | (rate < off_fraction * typical)
        off += float(np.sum(ov[is_off]))
        on += float(np.sum(ov[~is_off]))
        gap += float(np.sum(ov[dt > max_gap_s]))
    return Exposure(fluence, on, off, window, covered, gap)
