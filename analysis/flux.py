"""Facility beam logs (FORMATS.md section 3) and the fluence a run received.

ChipIR count logs (whitespace or ``;`` separated, first line ``Data From ChipIR``) and LANSCE logs
(``YYYY-MM-DD HH:MM:SS,mmm <cumulative count>``) both give a cumulative counter against time. The flux at
a board is the counter's rate x the facility's counts-to-flux factor x the board position's attenuation;
the fluence over a time window is the integral of that flux, with the counter interpolated linearly
between rows. Intervals where the counter stalls (or trickles below ``off_fraction`` of the median rate)
are beam-off time.

A facility writes one file per day (ChipIR) or per shift: every file of a facility is one timeline
(:func:`merge_flux_logs`). Each row interval of that timeline is one of

- ``OK``: the counter's own increase;
- ``GAP``: a file boundary or rows missing (longer than a few row spacings) with a counter that kept counting:
  bridged by linear interpolation when not longer than ``bridge_s``; reported as ``flux_gap_s``;
- ``ESTIMATED``: the counter went backwards (a reset, or the next day's file starts a new count) or jumped
  implausibly, over an interval not longer than ``bridge_s``: its counts are the neighbouring rate x its length;
- ``UNKNOWN``: any of those longer than ``bridge_s``: the beam's state there is unknown (never "off"), and a run
  that overlaps it cannot be given a fluence.

Bad rows never stop the analysis and are never silent: malformed rows, rows out of order, repeated rows, a
truncated last line, single-row counter spikes (dropped), resets and overlapping files each give a note naming
``file:line`` and what was done.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable, Sequence
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

OK, GAP, ESTIMATED, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = ("ok", "gap", "estimated", "unknown")
BRIDGE_S = 300.0  # default: gaps up to five minutes are bridged
SPIKE_FACTOR = 50.0  # an interval counting this many times the log's median beam-on rate is implausible


@dataclass
class FluxLog:
    """A facility log (or a timeline of several) as arrays; ``t`` UTC epoch seconds, increasing.

    ``counts`` is the cumulative counter as read (after dropping bad rows); ``dc`` the counts each row
    interval contributes and ``state`` what that number is (``OK`` ... ``UNKNOWN``, see the module docstring).
    """

    path: str
    kind: str  # "chipir" or "lansce"
    t: np.ndarray
    counts: np.ndarray
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # source line of each row
    src: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # index into ``files`` of each row
    files: list[str] = field(default_factory=list)
    dc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    state: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line number, text)
    resets: int = 0  # intervals where the counter went backwards
    duplicates: int = 0  # rows with a time stamp seen before (merged files), dropped
    spikes: int = 0  # single rows the neighbours show to be wrong, dropped
    messages: list[str] = field(default_factory=list)  # what was done to the rows, with file:line
    bridge_s: float = BRIDGE_S
    gap_min_s: float = 10.0

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
        return out + self.messages

    def where(self, row: int) -> str:
        """``file:line`` of row ``row``."""
        if len(self.src) and len(self.files):
            return f"{self.files[int(self.src[row])]}:{int(self.lines[row])}"
        return f"{self.path}:{int(self.lines[row]) if len(self.lines) else row + 1}"


class _Epoch:
    """Wall-clock fields read on ``zone`` -> UTC epoch seconds, as ``datetime(..., tzinfo=zone).timestamp()``
    gives, with the zone's offset looked up once per minute of the log instead of once per row."""

    def __init__(self, zone: tzinfo):
        self.zone = zone
        self.offsets: dict[tuple[int, ...], float] = {}

    def __call__(self, vals: Sequence[int], micro: int) -> float:
        key = tuple(vals[:5])
        off = self.offsets.get(key)
        if off is None:
            off = datetime(*vals[:5], tzinfo=self.zone).utcoffset().total_seconds()  # type: ignore[misc, union-attr]
            self.offsets[key] = off
        datetime(*vals)  # type: ignore[misc]  # refuses a day or time that does not exist (31/02, 25:00)
        return calendar.timegm((*vals, 0, 0, 0)) - off + micro / 1e6  # type: ignore[arg-type]


def detect_kind(path: Path) -> str:
    try:
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
    except OSError as exc:
        raise DataError(f"{path}: cannot read the flux log ({exc.strerror or exc})") from None
    raise DataError(
        f"{path}: not a facility log this tool reads (expected a ChipIR count log starting 'Data From ChipIR' "
        "or LANSCE rows 'YYYY-MM-DD HH:MM:SS,mmm <count>')"
    )


def _read_rows(path: Path, kind: str, zone: tzinfo) -> tuple[list[float], list[float], list[int], list, bool]:
    """Times, counter values and line numbers of the readable rows; malformed rows; whether the last row was
    dropped as truncated (a last line without its newline that has fewer fields than the file's rows)."""
    ts: list[float] = []
    cs: list[float] = []
    ln: list[int] = []
    bad: list[tuple[int, str]] = []
    fields: list[int] = []
    last_raw = ""
    lineno = 0
    epoch = _Epoch(zone)
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            last_raw = line
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
                    t = epoch((int(y), int(mo), int(d), int(hh), int(mi), int(ss)), min(micro, 999_999))
                    c = float(m.group(11))  # the fission counter
                else:
                    m = _LANSCE_ROW.match(s)
                    if not m:
                        raise ValueError
                    g = m.groups()
                    micro = int((g[6] or "0").ljust(6, "0"))
                    t = epoch(tuple(int(x) for x in g[:6]), micro)
                    c = float(g[7])
            except ValueError:
                bad.append((lineno, s))
                continue
            ts.append(t)
            cs.append(c)
            ln.append(lineno)
            fields.append(len(s.replace(";", " ").split()))
    truncated = False
    if last_raw.strip() and not last_raw.endswith("\n"):
        if bad and bad[-1][0] == lineno:  # the last line, cut short mid-row
            truncated = True
            bad.append(bad.pop())
        elif len(fields) > 1 and fields[-1] < max(set(fields), key=fields.count):  # a row with fields missing
            truncated = True
            bad.append((ln[-1], last_raw.strip()))
            for arr in (ts, cs, ln):
                arr.pop()
    return ts, cs, ln, bad, truncated


def read_flux_log(
    path: str | Path,
    zone: tzinfo = timezone.utc,
    kind: str | None = None,
    bridge_s: float = BRIDGE_S,
    max_rate: Callable[[np.ndarray], np.ndarray] | None = None,
) -> FluxLog:
    """Read a ChipIR or LANSCE log; times are read on ``zone`` (the facility clock) and stored as UTC.

    ``max_rate(t)``: the most counts per second that are plausible at time ``t`` (from the facility's plausible
    flux), besides :data:`SPIKE_FACTOR` x the log's median beam-on rate."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: flux log not found; give the facility's count log with --flux")
    kind = kind or detect_kind(path)
    ts, cs, ln, bad, truncated = _read_rows(path, kind, zone)
    if len(ts) < 2:
        raise DataError(f"{path}: fewer than two readable {kind} rows; is this the facility's count log?")
    msgs: list[str] = []
    if truncated:
        msgs.append(f"{path}:{bad[-1][0]}: the last line is cut short (no end of line, fields missing): ignored")
        bad = bad[:-1]
    t, c, lines = np.asarray(ts), np.asarray(cs), np.asarray(ln, dtype=np.int64)
    if np.any(np.diff(t) < 0):
        first = int(lines[int(np.argmax(np.diff(t) < 0)) + 1])
        n = int(np.count_nonzero(np.diff(t) < 0))
        msgs.append(f"{path}:{first}: rows out of time order ({n} places): sorted by time")
    order = np.argsort(t, kind="stable")
    t, c, lines = t[order], c[order], lines[order]
    keep = np.r_[True, np.diff(t) > 0]
    dropped = int(np.count_nonzero(~keep))
    if dropped:
        where = ", ".join(str(int(x)) for x in lines[~keep][:5]) + (" ..." if dropped > 5 else "")
        msgs.append(
            f"{path}: {dropped} rows repeat an earlier time stamp (merged file; lines {where}): dropped, "
            "the first row of each time kept"
        )
    t, c, lines = t[keep], c[keep], lines[keep]
    log = FluxLog(str(path), kind, t, c, lines, np.zeros(len(t), np.int64), [str(path)], malformed=bad,
                  duplicates=dropped, messages=msgs, bridge_s=bridge_s)  # fmt: skip
    _drop_spikes(log, max_rate)
    _intervals(log, max_rate)
    return log


def _median_on_rate(t: np.ndarray, c: np.ndarray) -> float:
    dc, dt = np.diff(c), np.diff(t)
    ok = (dc > 0) & (dt > 0)
    return float(np.median(dc[ok] / dt[ok])) if ok.any() else 0.0


def _drop_spikes(log: FluxLog, max_rate) -> None:
    """Drop single rows that their two neighbours show to be wrong: a counter that jumps (x10, a bit flip) and
    comes back, or dips and comes back. A drop that stays is a reset, handled per interval."""
    t, c = log.t, log.counts
    drop = np.zeros(len(t), bool)
    typical = _median_on_rate(t, c)
    # Only the places where the counter goes backwards are looked at; a spike is confirmed by the row before
    # and the row after it. Dropping a row changes its neighbours' comparison, so repeat until nothing changes.
    for _ in range(len(t)):
        live = np.flatnonzero(~drop)
        cl = c[live]
        neg = np.flatnonzero(np.diff(cl) < 0)
        changed = False
        touched: set[int] = set()
        for j in neg:
            if j in touched or j - 1 in touched or j + 1 in touched:
                continue  # next pass, with the rows around it settled
            a, b = int(live[j]), int(live[j + 1])
            if j > 0 and cl[j + 1] >= cl[j - 1]:  # row a jumped up and the counter came back: a spike
                drop[a] = True
            elif j + 2 < len(cl) and cl[j + 2] >= cl[j]:  # row b dipped and the counter came back
                drop[b] = True
            else:
                continue  # it stays down: a reset, handled per interval
            touched.add(int(j))
            changed = True
        if not changed:
            break
    # A last row far above every plausible rate has no row after it to confirm it: it is dropped too.
    live = np.flatnonzero(~drop)
    if len(live) > 2:
        a, b = live[-2], live[-1]
        rate = (c[b] - c[a]) / max(t[b] - t[a], 1e-9)
        if _implausible(np.array([rate]), np.array([t[a]]), typical, max_rate)[0]:
            drop[b] = True
    n = int(drop.sum())
    if not n:
        return
    for k in np.flatnonzero(drop)[:5]:
        log.messages.append(
            f"{log.where(int(k))}: counter spike {c[k]:.0f} (rows around it read "
            f"{c[max(0, k - 1)]:.0f} .. {c[min(len(c) - 1, k + 1)]:.0f}): row dropped"
        )
    if n > 5:
        log.messages.append(f"{log.path}: {n - 5} more counter spikes dropped")
    keep = ~drop
    log.t, log.counts, log.lines, log.src = log.t[keep], log.counts[keep], log.lines[keep], log.src[keep]
    log.spikes += n


def _implausible(rate: np.ndarray, t0: np.ndarray, typical: float, max_rate) -> np.ndarray:
    out = rate > SPIKE_FACTOR * typical if typical > 0 else np.zeros(len(rate), bool)
    if max_rate is not None:
        out |= rate > max_rate(t0)
    return out


def _intervals(log: FluxLog, max_rate=None) -> None:
    """Give every row interval its counts (``dc``) and its ``state``; note resets, jumps and long gaps."""
    t, c = log.t, log.counts
    dt = np.diff(t)
    d = np.diff(c)
    spacing = float(np.median(dt)) if len(dt) else 0.0
    log.gap_min_s = max(10.0, 3.0 * spacing)
    state = np.full(len(dt), OK, np.int8)
    dc = d.astype(float).copy()
    rate = np.where(dt > 0, d / np.where(dt > 0, dt, 1), 0.0)
    typical = _median_on_rate(t, c)
    boundary = log.src[1:] != log.src[:-1] if len(log.src) == len(t) else np.zeros(len(dt), bool)
    reset = d < 0
    jump = (d > 0) & _implausible(rate, t[:-1], typical, max_rate)
    long_ = (dt > log.gap_min_s) | boundary
    # A counter that stood still over a long interval says the beam was off there: that is known.
    gap = long_ & (d > 0) & ~jump
    bad = reset | jump
    state[gap] = np.where(dt[gap] <= log.bridge_s, GAP, UNKNOWN)
    state[bad] = np.where(dt[bad] <= log.bridge_s, ESTIMATED, UNKNOWN)
    dc[bad | (state == UNKNOWN)] = 0.0
    # Counts of an estimated interval: the rate of the nearest good intervals on each side.
    good = np.flatnonzero(state == OK)
    for k in np.flatnonzero(state == ESTIMATED):
        pos = np.searchsorted(good, k)
        around = [good[p] for p in (pos - 1, pos) if 0 <= p < len(good)]
        if not around:
            state[k] = UNKNOWN
            continue
        r = float(np.mean([max(0.0, d[g] / dt[g]) for g in around]))
        dc[k] = r * dt[k]
    log.dc, log.state = dc, state
    log.resets = int(reset.sum())

    def span(k: int) -> str:
        return f"{_iso(t[k])}..{_iso(t[k + 1])} UTC ({dt[k]:.0f} s)"

    for what, mask in (("the counter went backwards (a reset)", reset), ("the counter jumped implausibly", jump)):
        ks = np.flatnonzero(mask)
        for k in ks[:5]:
            done = (
                f"counted at the neighbouring rate ({dc[k]:.0f} counts)"
                if state[k] == ESTIMATED
                else "beam state unknown there (longer than the bridge limit)"
            )
            log.messages.append(f"{log.where(int(k) + 1)}: {what} over {span(int(k))}: {done}")
        if len(ks) > 5:
            log.messages.append(f"{log.path}: {len(ks) - 5} more intervals where {what}")
    for k in np.flatnonzero(long_ & ~bad & (d > 0))[:20]:
        kind = "between files" if boundary[k] else "rows missing"
        if state[k] == GAP:
            log.messages.append(f"{log.where(int(k) + 1)}: gap {kind} over {span(int(k))}: bridged (interpolated)")
        else:
            log.messages.append(
                f"{log.where(int(k) + 1)}: gap {kind} over {span(int(k))}: longer than the bridge limit "
                f"({log.bridge_s:g} s): beam state unknown there"
            )


def merge_flux_logs(logs: Sequence[FluxLog], bridge_s: float = BRIDGE_S, max_rate=None) -> FluxLog:
    """All files of one facility as one timeline, in time order. Rows of a file that fall inside the hours of
    a file already taken (two files for the same hours) are dropped with a note; the boundary between two files
    is an interval like any other (bridged, estimated or unknown, see the module docstring)."""
    if len(logs) == 1:
        return logs[0]
    logs = sorted(logs, key=lambda lg: (lg.start, lg.path))
    kinds = {lg.kind for lg in logs}
    if len(kinds) > 1:
        raise DataError(
            "flux logs of different kinds given together ("
            + ", ".join(f"{Path(lg.path).name}: {lg.kind}" for lg in logs)
            + "); give one facility's logs"
        )
    ts, cs, ls, ss = [], [], [], []
    files: list[str] = []
    msgs: list[str] = []
    malformed: list[tuple[int, str]] = []
    end = -math.inf
    for i, lg in enumerate(logs):
        files.append(lg.path)
        msgs += lg.notes()
        keep = lg.t > end
        if not keep.all():
            gone = np.flatnonzero(~keep)
            prev = next(f for f, s in zip(files, ss) if len(s)) if ss else ""
            msgs.append(
                f"{lg.path}:{int(lg.lines[gone[0]])}-{int(lg.lines[gone[-1]])}: {len(gone)} rows fall in hours "
                f"another flux file already covers (up to {_iso(end)} UTC, {prev or files[0]}): dropped, never "
                "counted twice"
            )
        ts.append(lg.t[keep])
        cs.append(lg.counts[keep])
        ls.append(lg.lines[keep])
        ss.append(np.full(int(keep.sum()), i, np.int64))
        if keep.any():
            end = max(end, float(lg.t[keep][-1]))
    merged = FluxLog(
        ", ".join(files), logs[0].kind, np.concatenate(ts), np.concatenate(cs), np.concatenate(ls),
        np.concatenate(ss), files, malformed=malformed, duplicates=sum(lg.duplicates for lg in logs),
        spikes=sum(lg.spikes for lg in logs), messages=[], bridge_s=bridge_s,
    )  # fmt: skip
    _intervals(merged, max_rate)
    # Per-file notes first (already said once per file), then what merging found at the boundaries.
    merged.messages = msgs + [m for m in merged.messages if "between files" in m or "went backwards" in m]
    return merged


def factor_schedule(flux_factor: float | None, dated: Sequence[tuple[float, float]] = ()):
    """A function from interval start times (UTC epoch) to the counts-to-flux factor in force then (NaN before
    the first date when there is no undated factor: unknown, and the run is excluded)."""
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
    """What a run received from one flux timeline."""

    fluence: float  # n/cm^2 at the board (from the intervals whose factor and counts are known)
    beam_on_s: float
    beam_off_s: float
    window_s: float  # the counted window (inside the beam windows, when given)
    covered: bool  # the log covers the whole run
    gap_s: float  # time inside the run in bridged gaps and estimated intervals
    unknown_s: float = 0.0  # time inside the run where the beam's state is unknown (long gaps)
    no_factor_s: float = 0.0  # time inside the run with no counts-to-flux factor in force (before the first date)

    @property
    def mean_flux(self) -> float:
        return self.fluence / self.window_s if self.window_s > 0 else math.nan


def exposure(
    log: FluxLog,
    start: float,
    end: float,
    factor,
    attenuation: float = 1.0,
    beam_windows: Sequence[tuple[float, float]] = (),
    off_fraction: float = 0.1,
    max_gap_s: float | None = None,
) -> Exposure:
    """Integrate the flux of ``log`` over [start, end] (UTC epoch seconds), inside ``beam_windows`` if given.

    ``max_gap_s``: report intervals longer than this as gaps (default: the log's own, a few row spacings)."""
    covered = log.covers(start, end)
    slack = log.edge_slack_s
    pieces = [(start, end)]
    if beam_windows:
        pieces = [(max(start, a), min(end, b)) for a, b in beam_windows if min(end, b) > max(start, a)]
    fluence = on = off = gap = window = unknown = no_factor = 0.0
    ok = log.state == OK
    dts = np.diff(log.t)
    typical = float(np.median(log.dc[ok & (log.dc > 0)] / dts[ok & (log.dc > 0)])) if (ok & (log.dc > 0)).any() else 0
    for a, b in pieces:
        window += b - a
        i0 = max(0, int(np.searchsorted(log.t, a, side="right")) - 1)
        i1 = min(len(log.t) - 1, int(np.searchsorted(log.t, b, side="left")))
        if i1 <= i0:
            continue
        t0, t1 = log.t[i0:i1], log.t[i0 + 1 : i1 + 1]
        dc = log.dc[i0:i1]
        st = log.state[i0:i1]
        dt = t1 - t0
        lo, hi = t0.copy(), t1.copy()
        if i0 == 0 and log.t[0] - slack <= a < log.t[0]:
            lo[0] = a  # extrapolate the first interval back to the run's start
        if i1 == len(log.t) - 1 and log.t[-1] < b <= log.t[-1] + slack:
            hi[-1] = b  # and the last one forward to its end
        ov = np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None)
        rate = dc / dt
        f = factor(t0)
        known_f = np.isfinite(f)
        unk = st == UNKNOWN
        use = known_f & ~unk
        fluence += float(np.sum(rate[use] * ov[use] * f[use])) * attenuation
        no_factor += float(np.sum(ov[~known_f & ~unk]))
        unknown += float(np.sum(ov[unk]))
        is_off = ((dc <= 0) | (rate < off_fraction * typical)) & ~unk
        off += float(np.sum(ov[is_off]))
        on += float(np.sum(ov[~is_off & ~unk]))
        long_gap = dt > max_gap_s if max_gap_s is not None else np.zeros(len(dt), bool)
        gap += float(np.sum(ov[(st == GAP) | (st == ESTIMATED) | (long_gap & ~unk)]))
    return Exposure(fluence, on, off, window, covered, gap, unknown, no_factor)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
