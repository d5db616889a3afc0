"""What the page shows of each DUT, from a live server or from the files a server writes.

:class:`LiveSource` reads the running server's supervisors (the same objects the watchdogs act on; nothing is
written back). :class:`FileSource` reads the status file the server rewrites every ``status_interval_s``
and the journal's snapshots, for ``diehard dashboard`` beside a server that runs without one. Both give the
same rows, and both say what they do not know (``None`` ages, a status file that stopped being rewritten).

:class:`JournalTail` follows the journal as it grows: the timeline of the watchdog's actions per DUT, and the
lines it could not read (named by line number, never fatal).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diehardlab.watchdog.supervisor import Snap

from diehardlab.campaign import CampaignFile, Escalation

# States of diehardlab.watchdog.supervisor, as the page names them.
STATE_LABELS = {
    "off": "off",
    "booting": "booting",
    "ready": "starting",
    "running": "running",
    "recovering": "recovering",
    "cool-down": "cooling down",
    "broken": "broken",
}
TIMELINE_PER_DUT = 40
SERVER_EVENTS = 20
RATE_WINDOW_S = 10.0


def escalation_step(snap: dict[str, Any], esc: Escalation) -> str:
    """The watchdog's current step: the highest level used since the DUT last made progress, as "k/max"."""
    if snap.get("broken") or snap.get("state") == "broken":
        return "broken (escalation exhausted)"
    levels = (
        ("cool-down", "cool_downs", esc.max_cool_downs),
        ("power cycle", "power_cycles", esc.max_power_cycles),
        ("OS reboot", "os_reboots", esc.max_os_reboots),
        ("app restart", "app_restarts", esc.max_app_restarts),
    )
    for label, key, most in levels:
        n = int(snap.get(key) or 0)
        if n:
            return f"{label} {n}/{most}"
    return "none"


class RateMeter:
    """Iterations per second of one DUT over the last ``RATE_WINDOW_S``, from its last iteration number.

    A smaller number than the last one is a new run (iterations count from zero again): the window restarts."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, iteration: int) -> None:
        if iteration < 0 or (self.samples and iteration < self.samples[-1][1]):
            self.samples.clear()
            if iteration < 0:
                return
        if not self.samples or iteration != self.samples[-1][1] or t - self.samples[-1][0] >= 1.0:
            self.samples.append((t, iteration))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Iterations per second between the oldest and the newest sample in the window: a DUT that stopped
        iterating keeps being sampled (live mode), so its rate falls to zero instead of freezing."""
        if len(self.samples) < 2:
            return None
        (t0, i0), (t1, i1) = self.samples[0], self.samples[-1]
        return (i1 - i0) / (t1 - t0) if t1 > t0 else None


def _dut_row(
    name: str,
    snap: dict[str, Any],
    esc: Escalation,
    benchmark: str,
    heard_at: float | None,
    datagrams: int | None,
    rate: float | None,
) -> dict[str, Any]:
    state = str(snap.get("state", "off"))
    return {
        "name": name,
        "state": state,
        "state_label": STATE_LABELS.get(state, state),
        "step": escalation_step(snap, esc),
        "benchmark": benchmark,
        "heard_at": None if heard_at is None else round(heard_at, 3),  # wall time: the page ticks the age itself
        "datagrams": datagrams,
        "iteration": int(snap.get("last_iteration", -1)),
        "it_per_s": None if rate is None else round(rate, 3),
        "sdc": int(snap.get("sdc") or 0),
        "due": int(snap.get("due") or 0),
        "app_restarts": int(snap.get("total_app_restarts") or 0),
        "os_reboots": int(snap.get("total_os_reboots") or 0),
        "power_cycles": int(snap.get("total_power_cycles") or 0),
    }


def escalation_of(c: CampaignFile, name: str) -> Escalation:
    d = c.dut(name)
    return d.escalation or c.escalation


class LiveSource:
    """The running server's own state (``diehard serve --dashboard``): read, never written."""

    mode = "live"

    def __init__(self, server: Any):
        self.server = server
        self.c: CampaignFile = server.c
        self.rates = {d.name: RateMeter() for d in self.c.duts}

    def duts(self) -> tuple[list[dict[str, Any]], list[str]]:
        mono = time.monotonic()
        rows = []
        for d in self.c.duts:
            sup = self.server.supervisors.get(d.name)
            if sup is None:  # not built yet
                rows.append(_dut_row(d.name, {}, escalation_of(self.c, d.name), d.benchmarks[0].name, None, 0, None))
                continue
            snap = dict(vars(sup.snap))
            heard = sup.last_heard_wall
            meter = self.rates[d.name]
            meter.add(mono, int(snap.get("last_iteration", -1)))
            rate = meter.rate()
            rows.append(
                _dut_row(d.name, snap, sup.esc, sup.bench.name, heard, sup.datagrams, rate)
            )  # fmt: skip
        return rows, []

    def in_progress(self) -> list[str]:
        """The server copies being written now: runs without their closing line yet (not DUEs)."""
        out = []
        for sup in list(self.server.supervisors.values()):
            copy = sup.copy
            if copy is not None and not copy.closed:
                out.append(copy.path.name)
        return out

    def server_info(self) -> dict[str, Any]:
        r = self.server.receiver
        return {
            "datagrams": r.received if r else 0,
            "rejected": dict(r.rejected) if r else {},
            "status": "running",
        }


class FileSource:
    """``diehard dashboard FILE``: the status file a server rewrites and the journal's snapshots."""

    mode = "files"

    def __init__(self, campaign: CampaignFile, status_path: Path, journal: JournalTail):
        self.c = campaign
        self.status_path = status_path
        self.journal = journal
        self.rates = {d.name: RateMeter() for d in campaign.duts}
        self._doc: dict[str, Any] | None = None
        self._mtime = 0.0
        self._error = ""

    def _read_status(self) -> None:
        try:
            st = self.status_path.stat()
        except FileNotFoundError:
            self._doc = None
            return
        if st.st_mtime == self._mtime:
            return
        try:
            doc = json.loads(self.status_path.read_bytes())
            if not isinstance(doc, dict) or not isinstance(doc.get("duts"), dict):
                raise ValueError("no 'duts' table")
            for name, s in doc["duts"].items():
                why = Snap.problem(s) if isinstance(s, dict) else "not a table"
                if why is None and not all(_number(s.get(k)) for k in ("heartbeat_age_s", "datagrams")):
                    why = "heartbeat_age_s or datagrams is not a number"
                if why is not None:
                    raise ValueError(f"DUT {name}: {why}")
        except (OSError, ValueError) as exc:  # being replaced, or damaged: keep the last good one and say so
            self._error = f"{self.status_path}: unreadable ({exc})"
            return
        self._doc, self._mtime, self._error = doc, st.st_mtime, ""
        t = st.st_mtime
        for name, s in doc["duts"].items():
            if name in self.rates and isinstance(s, dict):
                self.rates[name].add(t, int(s.get("last_iteration", -1)))

    def duts(self) -> tuple[list[dict[str, Any]], list[str]]:
        self._read_status()
        now = time.time()
        warnings = []
        doc = self._doc
        status_age = None if doc is None else now - self._mtime
        interval = self.c.server.status_interval_s
        if doc is None:
            warnings.append(
                f"no server status file ({self.status_path}): datagram ages and iteration rates are unknown; "
                "states come from the journal"
            )
        elif status_age is not None and status_age > 3 * interval + 5:
            warnings.append(
                f"the server's status file was last written at {_utc(self._mtime)} (every {interval:g} s while the "
                "server runs): the server may have stopped; datagram ages and states are as of then"
            )
        if self._error:
            warnings.append(self._error)
        rows = []
        for d in self.c.duts:
            s = (doc or {}).get("duts", {}).get(d.name) if doc else None
            js, jtime = self.journal.last_snap(d.name)
            snap = dict(s) if isinstance(s, dict) else {}
            # The journal is written at every state change, the status file every interval: the newer one wins.
            if js is not None and (not snap or jtime > self._mtime):
                snap.update(js)
            heard = None
            if isinstance(s, dict) and s.get("heartbeat_age_s") is not None:
                heard = self._mtime - float(s["heartbeat_age_s"])
            fresh = doc is not None and status_age is not None and status_age <= 3 * interval + 5
            rate = self.rates[d.name].rate() if fresh else None
            bench = str(snap.get("benchmark") or d.benchmarks[int(snap.get("bench", 0)) % len(d.benchmarks)].name)
            datagrams = s.get("datagrams") if isinstance(s, dict) else None
            rows.append(_dut_row(d.name, snap, escalation_of(self.c, d.name), bench, heard, datagrams, rate))
        return rows, warnings

    def in_progress(self) -> list[str]:
        """The newest server copy of each DUT the server says is running, if it was written lately (the files
        do not say which copy is open: a copy that grew within the DUT's liveness timeout, plus the status
        interval, is taken as the run in progress)."""
        from diehardlab.formats.filename import parse_log_name

        # One pass over the folder (it holds every run of the campaign): the newest copy of each host.
        newest: dict[str, tuple[float, str]] = {}
        try:
            for p in self.c.server.log_dir.glob("*.log"):
                n = parse_log_name(p)
                if n is not None:
                    with contextlib.suppress(OSError):
                        newest[n.hostname] = max(newest.get(n.hostname, (-1.0, "")), (p.stat().st_mtime, p.name))
        except OSError:
            return []
        now = time.time()
        out = []
        for d in self.c.duts:
            snap, _ = self.journal.last_snap(d.name)
            state = ((self._doc or {}).get("duts", {}).get(d.name) or {}).get("state") or (snap or {}).get("state")
            if state != "running" or d.hostname not in newest:
                continue
            t, name = newest[d.hostname]
            if now - t <= d.liveness_timeout_s + 3 * self.c.server.status_interval_s + 5:
                out.append(name)
        return out

    def server_info(self) -> dict[str, Any]:
        doc = self._doc or {}
        return {
            "datagrams": doc.get("datagrams"),
            "rejected": doc.get("rejected", {}),
            "status": "files",
            "status_time": doc.get("time"),
        }


def _number(v: Any) -> bool:
    """None (unknown) or a finite number, as the status file holds them."""
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the journal ------------------------------------------------------------------------------------------


def timeline_entry(rec: dict[str, Any], lineno: int) -> dict[str, Any]:
    """A journal record as the page's timeline shows it: time, event, and the few fields worth a glance."""
    detail = []
    for key in ("cause", "reason", "next", "iteration", "silent_s", "seconds", "switch", "outlet", "error", "pid"):
        if key in rec and rec[key] is not None:
            detail.append(f"{key} {str(rec[key])[:120]}")
    return {
        "line": lineno,
        "time": str(rec.get("time", "")),
        "event": str(rec.get("event", "?")),
        "dut": rec.get("dut"),
        "detail": ", ".join(detail),
    }


@dataclass
class JournalTail:
    """Follows the journal file: reads what was appended since the last call, line by line.

    A line without its newline yet is left for the next call (the server may be writing it). A complete line
    that is not a JSON object is counted and named (line number, first characters) and skipped: one damaged
    line never hides the rest of the timeline."""

    path: Path
    per_dut: int = TIMELINE_PER_DUT
    offset: int = 0
    lineno: int = 0
    timeline: dict[str, deque] = field(default_factory=dict)
    server_events: deque = field(default_factory=lambda: deque(maxlen=SERVER_EVENTS))
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    unreadable_total: int = 0
    snaps: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)
    error: str = ""
    _inode: int = -1
    _rest: bytes = b""

    def poll(self, max_bytes: int = 8 << 20) -> list[dict[str, Any]]:
        """New timeline entries since the last call (at most ``max_bytes`` read per call)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.error = f"journal {self.path} does not exist yet"
            return []
        except OSError as exc:
            self.error = f"journal {self.path}: {exc}"
            return []
        if st.st_ino != self._inode or st.st_size < self.offset:  # replaced or truncated: read it afresh
            self._inode, self.offset, self.lineno, self._rest = st.st_ino, 0, 0, b""
            self.timeline.clear()
            self.server_events.clear()
            self.unreadable.clear()
            self.unreadable_total = 0
            self.snaps.clear()
        if st.st_size == self.offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(min(max_bytes, st.st_size - self.offset))
        except OSError as exc:
            self.error = f"journal {self.path}: {exc}"
            return []
        self.error = ""
        self.offset += len(data)
        data = self._rest + data
        lines = data.split(b"\n")
        self._rest = lines.pop()  # after the last newline: an incomplete line, or b""
        new = []
        mtime = st.st_mtime
        for raw in lines:
            self.lineno += 1
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.unreadable_total += 1
                if len(self.unreadable) < 5:
                    self.unreadable.append({"line": self.lineno, "text": raw[:80].decode("utf-8", "replace")})
                continue
            entry = timeline_entry(rec, self.lineno)
            dut = rec.get("dut")
            if isinstance(dut, str):
                self.timeline.setdefault(dut, deque(maxlen=self.per_dut)).append(entry)
                why = Snap.problem(rec["snap"]) if isinstance(rec.get("snap"), dict) else None
                if why is not None:  # a damaged snapshot: its numbers are unknown, the page says so
                    self.unreadable_total += 1
                    if len(self.unreadable) < 5:
                        self.unreadable.append({"line": self.lineno, "text": f"snap: {why}"})
                elif isinstance(rec.get("snap"), dict):
                    snap = dict(rec["snap"])
                    if rec.get("benchmark"):
                        snap["benchmark"] = rec["benchmark"]
                    self.snaps[dut] = (snap, mtime)
            else:
                self.server_events.append(entry)
            new.append(entry)
        return new

    def last_snap(self, dut: str) -> tuple[dict[str, Any] | None, float]:
        snap, t = self.snaps.get(dut, (None, 0.0))
        return snap, t

    def snapshot(self) -> dict[str, Any]:
        return {
            "duts": {k: list(v) for k, v in self.timeline.items()},
            "server": list(self.server_events),
            "unreadable": list(self.unreadable),
            "unreadable_total": self.unreadable_total,
            "error": self.error,
        }
