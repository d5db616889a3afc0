"""Per run (one log file): UTC times, kernel and wall time, SDC split, DUE cause, and its fluence.

A run's window on the facility clock comes from the log (``#BEGIN`` on the DUT clock, server markers
on the server clock, both read in the zones the campaign file states). It ends at the last DUT line of a
run that ended in a DUE, at ``#SERVER_END`` or the last receive time of a server copy, and for a log that
carries no wall-clock end (libLogHelper writes none) at the file's modification time when that is plausible,
else at start + kernel time (a lower bound). ``end_source`` says which.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

from diehardlab.analysis.flux import FluxLog, exposure
from diehardlab.analysis.inventory import find_files

from diehardlab.formats.parser import LogSummary, summarize
from diehardlab.timezones import to_utc

UTC = timezone.utc

# Our "#INF DUE cause:" values (diehardlab.formats.grammar.DUE_CAUSES) -> DUE class.
DUE_CLASS = {"app-crash": "crash", "app-hang": "hang", "os-hang": "hang"}

FLUENCE_METHODS = ("integrated", "mean-flux-x-acc-time")


@dataclass
class EventMark:
    """One SDC of a run, located in kernel time, for the cumulative-events plot."""

    kernel_s: float | None
    critical: bool


@dataclass
class Run:
    path: str
    name: str
    board: str
    host: str
    benchmark: str
    model: str
    ecc: str
    start_utc: datetime | None
    start_source: str
    end_utc: datetime | None
    end_source: str
    kernel_time_s: float
    iterations: int
    sdc: int
    sdc_critical: int
    sdc_tolerable: int
    sdc_split_known: bool
    due: int
    due_class: str  # "", crash, hang, other, unknown
    due_cause: str
    aborted: str
    ended: bool
    unparsed_lines: int
    copies: int = 1
    flux_log: str = ""
    fluence_n_cm2: float = math.nan
    fluence_integrated_n_cm2: float = math.nan
    beam_on_s: float = math.nan
    beam_off_s: float = math.nan
    flux_gap_s: float = math.nan
    mean_flux_n_cm2_s: float = math.nan
    fluence_method: str = "integrated"
    excluded: bool = False
    exclude_reason: str = ""
    events: list[EventMark] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        if self.start_utc is None or self.end_utc is None:
            return math.nan
        return (self.end_utc - self.start_utc).total_seconds()


def scan_all(paths: Sequence[Path], jobs: int = 0) -> list[LogSummary]:
    """Summaries of many logs, in a pool of processes when there are many."""
    jobs = jobs or (os.cpu_count() or 1)
    names = [str(p) for p in paths]
    if jobs > 1 and len(names) >= 16:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(summarize, names, chunksize=max(1, len(names) // (jobs * 8))))
    return [summarize(p) for p in names]


def find_logs(dirs: Sequence[Path]) -> list[Path]:
    return find_files(dirs, "*.log", "give the folder that holds the .log files with --logs")


def merge_copies(scans: list[LogSummary]) -> list[tuple[LogSummary, LogSummary | None, int]]:
    """Group the copies of one log (the DUT's own file and the server's copy share its name).

    The primary copy is the one that saw most of the run (largest AccTime, then most lines); a server copy's
    closing marker (END or DUE) is taken from whichever copy has one.
    """
    by_name: dict[str, list[LogSummary]] = {}
    for sc in scans:
        by_name.setdefault(Path(sc.path).name, []).append(sc)
    out = []
    for group in by_name.values():
        group.sort(key=lambda x: (x.last_acc_time or -1.0, x.lines), reverse=True)
        server = next((g for g in group if g.server_end is not None or g.server_begin), None)
        out.append((group[0], server, len(group)))
    return out


@dataclass
class Clocks:
    dut: dict[str, tzinfo]  # by host name in log names
    default_dut: tzinfo | None
    server: tzinfo


# The file's modification time is taken as the run's end only when it is plausible: not before the kernel
# time is over, and not much later than the run could have lasted (a copy made later has a later mtime).
MTIME_SLACK_S = 2.0
MTIME_MAX_WALL_PER_KERNEL = 50.0
MTIME_MAX_EXTRA_S = 3600.0


def _fallback_end(path: str, start: datetime, kernel: float, wall_end: str) -> tuple[datetime, str]:
    """The end of a log that carries no wall-clock end (libLogHelper writes none)."""
    lower = start + timedelta(seconds=kernel)
    if wall_end == "auto":
        try:
            mtime = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
        except OSError:
            mtime = None
        upper = start + timedelta(seconds=max(kernel * MTIME_MAX_WALL_PER_KERNEL, kernel + MTIME_MAX_EXTRA_S))
        if mtime is not None and lower - timedelta(seconds=MTIME_SLACK_S) <= mtime <= upper:
            return max(mtime, lower), "file modification time"
    return lower, "start + kernel time (no wall-clock end in log)"


def build_run(
    s: LogSummary, server: LogSummary | None, copies: int, campaign, clocks: Clocks, wall_end: str = "auto"
) -> Run:
    """One run from the primary copy ``s`` of a log and its server copy (None when there is none)."""
    host = s.hostname or ""
    dut = None
    for d in campaign.duts:
        if host in (d.hostname, d.name):
            dut = d
            break
    board = dut.name if dut else host
    model = s.benchmark or ""
    if dut:
        for b in dut.benchmarks:
            if b.name == s.benchmark:
                model = b.model or b.name
    dut_zone = UTC if s.clock == "UTC" else clocks.dut.get(host, clocks.default_dut)
    srv = server if server is not None else s
    start, source = None, ""
    for when, zone, label in (
        (s.begin, dut_zone, "#BEGIN"),
        (srv.server_begin, clocks.server, "#SERVER_BEGIN"),
        (s.name_time, dut_zone, "file name"),
        (srv.first_stamp, clocks.server, "first timestamp"),
    ):
        if when is not None and zone is not None:
            start, source = to_utc(when, zone), label
            break
    kernel = s.kernel_time
    due, due_class, cause = due_of(s, server)
    # A run that ended in a DUE stopped working at its last line, not when the server noticed (a liveness
    # timeout later): the workload's time under beam ends there.
    ends = [(srv.last_dut_stamp, "last DUT line before the DUE")] if due else []
    ends += [(srv.server_end_time, "#SERVER_END time"), (srv.last_stamp, "last timestamp")]
    end, end_source = None, ""
    if start is not None:
        for when, label in ends:
            t = to_utc(when, clocks.server)
            if t is not None and t > start:
                end, end_source = t, label
                break
        else:
            end, end_source = _fallback_end(s.path, start, kernel, wall_end)
    first = s.first_acc_time
    events = [EventMark(None if e.acc_time is None or first is None else e.acc_time - first, e.critical) for e in s.sdc]
    run = Run(
        path=s.path,
        name=Path(s.path).name,
        board=board,
        host=host,
        benchmark=s.benchmark or "",
        model=model,
        ecc=s.ecc or "",
        start_utc=start,
        start_source=source,
        end_utc=end,
        end_source=end_source,
        kernel_time_s=kernel,
        iterations=s.iterations,
        sdc=s.sdc_count,
        sdc_critical=s.critical_sdc,
        sdc_tolerable=s.tolerable_sdc,
        sdc_split_known=s.dnn_details,
        due=due,
        due_class=due_class,
        due_cause=cause,
        aborted=s.aborted or "",
        ended=s.ended,
        unparsed_lines=s.unparsed,
        copies=copies,
        events=events,
    )
    if start is None and dut_zone is None and (s.begin or s.name_time):
        run.excluded = True
        run.exclude_reason = (
            f"host {host!r} is not in the campaign: its clock zone is unknown (add a [[dut]] with hostname "
            f"{host!r} and timezone, or give --dut-timezone)"
        )
    elif start is None:
        run.excluded, run.exclude_reason = True, "no start time (no #BEGIN, server marker or dated file name)"
    return run


def due_of(s: LogSummary, server: LogSummary | None) -> tuple[int, str, str]:
    """(1 if the run ended in a DUE, its class, its cause). The server copy's closing marker decides when
    there is one; a DUT log alone that stops without #END, #ABORT or a STOP line is a DUE of unknown cause."""
    src = server if server is not None else s
    cause = src.due_cause or s.due_cause
    if cause:
        return 1, DUE_CLASS.get(cause, "other"), cause
    if src.server_end == "due":
        return 1, "unknown", src.due_reason or "server DUE"
    if src.server_end == "end" or s.ended or s.aborted or s.stop_reason is not None:
        return 0, "", ""
    if server is not None and (server.ended or server.aborted or server.stop_reason is not None):
        return 0, "", ""
    return 1, "unknown", "no #END"


def attach_flux(
    run: Run,
    logs: Sequence[FluxLog],
    factor,
    attenuation: float,
    method: str,
    beam_windows: Sequence[tuple[float, float]] = (),
    off_fraction: float = 0.1,
    prefer: str | None = None,
) -> None:
    """Give ``run`` its fluence from the flux log that covers it (``prefer``: a log to try first)."""
    if run.excluded or run.start_utc is None or run.end_utc is None:
        return
    a, b = run.start_utc.timestamp(), run.end_utc.timestamp()
    ordered = sorted(logs, key=lambda log: log.path != prefer)
    chosen = next((log for log in ordered if log.covers(a, b)), None)
    run.fluence_method = method
    if chosen is None:
        span = (
            ", ".join(f"{Path(lg.path).name} {_iso(lg.start)}..{_iso(lg.end)}" for lg in ordered[:3])
            or "no flux log given"
        )
        run.excluded = True
        run.exclude_reason = f"no flux log covers {_iso(a)}..{_iso(b)} UTC ({span})"
        return
    e = exposure(chosen, a, b, factor, attenuation, beam_windows, off_fraction)
    run.flux_log = chosen.path
    run.fluence_integrated_n_cm2 = e.fluence
    run.beam_on_s, run.beam_off_s, run.flux_gap_s = e.beam_on_s, e.beam_off_s, e.gap_s
    run.mean_flux_n_cm2_s = e.mean_flux
    if method == "integrated":
        run.fluence_n_cm2 = e.fluence
    else:  # the reference parsers: mean flux over the run's window x accumulated kernel time
        run.fluence_n_cm2 = e.mean_flux * run.kernel_time_s if e.window_s > 0 else 0.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S")
