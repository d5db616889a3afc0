"""Per run (one log and its copies): UTC times, kernel and wall time, SDC split, DUE cause, and its fluence.

A run's window on the facility clock comes from the log (``#BEGIN`` on the DUT clock, server markers
on the server clock, both read in the zones the campaign file states). It ends at the last DUT line of a
run that ended in a DUE, at ``#SERVER_END`` or the last receive time of a server copy, and for a log that
carries no wall-clock end (libLogHelper writes none) at start + kernel time (a lower bound). The file's
modification time is read only when asked (``wall_end="mtime"``): a copy that lost its times must give the same
result as the original. ``end_source`` says which, ``fluence_window`` what kind of window that is.

Copies of one log (the DUT's own file, the server's copy, a pulled copy) share its file name and their
contents: the same ``#BEGIN``, ``#HEADER`` and progress records. Two files with one name whose contents differ
(``Kepler/ECCON`` and ``Kepler/ECCOFF``) are two runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path, PurePath

from diehardlab.analysis.flux import FluxLog, exposure
from diehardlab.analysis.inventory import find_files, map_logs

from diehardlab.formats.parser import LogSummary, summarize
from diehardlab.timezones import to_utc

UTC = timezone.utc

# Our "#INF DUE cause:" values (diehardlab.formats.grammar.DUE_CAUSES) -> DUE class.
DUE_CLASS = {"app-crash": "crash", "app-hang": "hang", "os-hang": "hang"}

FLUENCE_METHODS = ("integrated", "mean-flux-x-acc-time")
WALL_END = ("kernel", "mtime")
KERNEL_WINDOW = "start + kernel time"


@dataclass
class EventMark:
    """One SDC of a run, located in kernel time, for the cumulative-events plot."""

    kernel_s: float | None
    critical: bool | None  # None: the log does not say (no diehardnet detail lines)


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
    sdc_critical: int | None  # None: unknown (the log has no diehardnet detail lines)
    sdc_tolerable: int | None
    sdc_split_known: bool
    due: int
    due_class: str  # "", crash, hang, other, unknown
    due_cause: str
    aborted: str
    ended: bool
    unparsed_lines: int
    copies: int = 1
    run: str = ""  # a name unique in the campaign (the file name, or its folder and name when names repeat)
    ecc_source: str = ""
    header: dict[str, str] = field(default_factory=dict)
    config: str = ""  # the header keys that set this run apart from others of its board and benchmark
    fluence_window: str = ""  # "wall clock", "start + kernel time" or "file time"
    due_root_cause: str = ""
    due_detail: str = ""
    due_cause_source: str = ""
    due_recovery: str = ""
    due_recovery_source: str = ""
    due_marker: str = ""  # the recovery level the server copy's closing lines name
    flux_log: str = ""
    fluence_n_cm2: float = math.nan
    fluence_integrated_n_cm2: float = math.nan
    beam_on_s: float = math.nan
    beam_off_s: float = math.nan
    flux_gap_s: float = math.nan
    flux_unknown_s: float = math.nan
    mean_flux_n_cm2_s: float = math.nan
    fluence_method: str = "integrated"
    events_beam_off: int = 0  # SDC + DUE of a run that received no fluence: never pooled into a cross section
    flag: str = ""  # what needs a reader's attention in this run (beam-off events, ...)
    excluded: bool = False
    exclude_reason: str = ""
    events: list[EventMark] = field(default_factory=list)
    copy_paths: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        if self.start_utc is None or self.end_utc is None:
            return math.nan
        return (self.end_utc - self.start_utc).total_seconds()


def scan_all(paths: Sequence[Path], jobs: int = 0) -> list[LogSummary]:
    """Summaries of many logs, in a pool of processes when there are many."""
    return map_logs(summarize, [str(p) for p in paths], jobs)


def find_logs(dirs: Sequence[Path]) -> list[Path]:
    return find_files(dirs, "*.log", "give the folder that holds the .log files with --logs")


def same_run(a: LogSummary, b: LogSummary) -> bool:
    """Whether two logs with one file name are copies of one run, from their contents.

    Copies share the ``#BEGIN``, the ``#HEADER`` and every progress record both of them hold (iteration and
    AccTime, to the last printed digit). Logs that both have progress records and share none are two runs;
    a copy with no progress record at all (a run that died at once) has nothing that says otherwise."""
    if a.begin is not None and b.begin is not None and a.begin != b.begin:
        return False
    if a.header is not None and b.header is not None and a.header != b.header:
        return False
    ma, mb = dict(a.marks), dict(b.marks)
    common = ma.keys() & mb.keys()
    if common:
        return all(ma[k] == mb[k] for k in common)
    return not (ma and mb)


def merge_copies(scans: list[LogSummary]) -> list[tuple[LogSummary, LogSummary | None, list[LogSummary]]]:
    """Group the copies of one run: files with one name whose contents agree (:func:`same_run`).

    The primary copy is the one that saw most of the run (largest AccTime, then most lines); a server copy's
    closing marker (END or DUE) is taken from whichever copy has one.
    """
    by_name: dict[str, list[LogSummary]] = {}
    for sc in scans:
        by_name.setdefault(Path(sc.path).name, []).append(sc)
    out = []
    for group in by_name.values():
        runs: list[list[LogSummary]] = []
        for sc in group:
            home = next((r for r in runs if all(same_run(sc, other) for other in r)), None)
            if home is None:
                runs.append([sc])
            else:
                home.append(sc)
        for members in runs:
            members.sort(key=lambda x: (x.last_acc_time or -1.0, x.lines, x.path), reverse=True)
            server = next((g for g in members if g.server_end is not None or g.server_begin), None)
            out.append((members[0], server, members))
    return out


def parse_header(text: str | None) -> dict[str, str]:
    """The ``key:value`` fields of a ``#HEADER`` (also ``key: value``, as in ``abft: dumb_abft``); words that
    belong to no key are kept under ``_text``."""
    if not text:
        return {}
    out: dict[str, str] = {}
    loose: list[str] = []
    tokens = text.split()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        key, sep, value = tok.partition(":")
        if sep and key and not key.startswith(("/", ".")):
            if not value and i + 1 < len(tokens) and ":" not in tokens[i + 1]:
                value = tokens[i + 1]
                i += 1
            out[key] = value
        else:
            loose.append(tok)
        i += 1
    if loose:
        out["_text"] = " ".join(loose)
    return out


@dataclass
class Clocks:
    dut: dict[str, tzinfo]  # by host name in log names
    default_dut: tzinfo | None
    server: tzinfo


# With wall_end="mtime" the file's modification time is taken as the run's end only when it is plausible: not
# before the kernel time is over, and not much later than the run could have lasted (a later copy is not).
MTIME_SLACK_S = 2.0
MTIME_MAX_WALL_PER_KERNEL = 50.0
MTIME_MAX_EXTRA_S = 3600.0


def _fallback_end(path: str, start: datetime, kernel: float, wall_end: str) -> tuple[datetime, str]:
    """The end of a log that carries no wall-clock end (libLogHelper writes none)."""
    lower = start + timedelta(seconds=kernel)
    if wall_end == "mtime":
        try:
            mtime = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
        except OSError:
            mtime = None
        upper = start + timedelta(seconds=max(kernel * MTIME_MAX_WALL_PER_KERNEL, kernel + MTIME_MAX_EXTRA_S))
        if mtime is not None and lower - timedelta(seconds=MTIME_SLACK_S) <= mtime <= upper:
            return max(mtime, lower), "file modification time"
    return lower, f"{KERNEL_WINDOW} (no wall-clock end in log)"


def _folder_matches(path: str, folder: str) -> bool:
    want = PurePath(folder).parts
    have = PurePath(path).parent.parts
    n = len(want)
    return any(have[i : i + n] == want for i in range(len(have) - n + 1)) if n else False


def resolve_ecc(name_ecc: str | None, path: str, board: str, host: str, start: datetime | None, campaign,
                fzone: tzinfo) -> tuple[str, str, str]:  # fmt: skip
    """(ECC, where it came from, a note): the log name's field, else the first campaign rule that matches
    (board, folder, time range on the facility clock), else the DUT's ``ecc`` setting when it is on or off."""
    rules = list(getattr(campaign.analysis, "ecc", []) or [])
    hit = None
    for i, r in enumerate(rules, 1):
        if r.board is not None and r.board not in (board, host):
            continue
        if r.folder is not None and not _folder_matches(path, r.folder):
            continue
        if (r.since is not None or r.until is not None) and start is None:
            continue
        if r.since is not None and start < r.since.replace(tzinfo=fzone):
            continue
        if r.until is not None and start >= r.until.replace(tzinfo=fzone):
            continue
        hit = (r.value.upper(), f"campaign [[analysis.ecc]] rule {i}")
        break
    if name_ecc:
        note = ""
        if hit and hit[0] != name_ecc:
            note = f"{path}: the log name says ECC {name_ecc}, {hit[1]} says {hit[0]}: the log name wins"
        return name_ecc, "log file name", note
    if hit:
        return hit[0], hit[1], ""
    dut = next((d for d in campaign.duts if board == d.name), None)
    if dut is not None and dut.ecc in ("on", "off"):
        return dut.ecc.upper(), f"[[dut]] {dut.name} ecc", ""
    return "", "", ""


def build_run(
    s: LogSummary,
    server: LogSummary | None,
    members: Sequence[LogSummary],
    campaign,
    clocks: Clocks,
    wall_end: str = "kernel",
    fzone: tzinfo = UTC,
) -> tuple[Run, list[str]]:
    """One run from the primary copy ``s`` of a log, its server copy (None when there is none) and all its
    copies; and the notes it gives."""
    notes: list[str] = []
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
    window = ""
    if end_source:
        window = "file time" if end_source == "file modification time" else (
            KERNEL_WINDOW if end_source.startswith(KERNEL_WINDOW) else "wall clock")  # fmt: skip
    first = s.first_acc_time
    known = s.critical_sdc is not None
    events = [
        EventMark(None if e.acc_time is None or first is None else e.acc_time - first, e.critical if known else None)
        for e in s.sdc
    ]
    ecc, ecc_source, note = resolve_ecc(s.ecc, s.path, board, host, start, campaign, fzone)
    if note:
        notes.append(note)
    header_text = next((m.header for m in [s, *members] if m.header), None)
    run = Run(
        path=s.path,
        name=Path(s.path).name,
        board=board,
        host=host,
        benchmark=s.benchmark or "",
        model=model,
        ecc=ecc,
        ecc_source=ecc_source,
        start_utc=start,
        start_source=source,
        end_utc=end,
        end_source=end_source,
        fluence_window=window,
        kernel_time_s=kernel,
        iterations=s.iterations,
        sdc=s.sdc_count,
        sdc_critical=s.critical_sdc,
        sdc_tolerable=s.tolerable_sdc,
        sdc_split_known=known,
        due=due,
        due_class=due_class,
        due_cause=cause,
        aborted=s.aborted or "",
        ended=s.ended,
        unparsed_lines=s.unparsed,
        copies=len(members),
        copy_paths=[m.path for m in members],
        header=parse_header(header_text),
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
    return run, notes


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
    """Give ``run`` its fluence from the flux timeline that covers it (``prefer``: a log to try first).

    A run is excluded, with the reason, when no timeline covers its window, when part of it lies in a long gap
    of the flux logs (beam state unknown) or before the first dated counts-to-flux factor (factor unknown)."""
    if run.excluded or run.start_utc is None or run.end_utc is None:
        return
    a, b = run.start_utc.timestamp(), run.end_utc.timestamp()
    ordered = sorted(logs, key=lambda log: log.path != prefer)
    chosen = next((log for log in ordered if log.covers(a, b)), None)
    run.fluence_method = method
    if chosen is None:
        span = ", ".join(f"{_names(lg)} {_iso(lg.start)}..{_iso(lg.end)}" for lg in ordered[:3]) or "no flux log given"
        run.excluded = True
        run.exclude_reason = f"no flux log covers {_iso(a)}..{_iso(b)} UTC ({span})"
        return
    e = exposure(chosen, a, b, factor, attenuation, beam_windows, off_fraction)
    run.flux_log = chosen.path
    run.fluence_integrated_n_cm2 = e.fluence
    run.beam_on_s, run.beam_off_s, run.flux_gap_s = e.beam_on_s, e.beam_off_s, e.gap_s
    run.flux_unknown_s = e.unknown_s
    run.mean_flux_n_cm2_s = e.mean_flux
    if e.unknown_s > 0:
        run.excluded = True
        run.exclude_reason = (
            f"beam state unknown for {e.unknown_s:.0f} s of the run ({_iso(a)}..{_iso(b)} UTC): the flux logs have a "
            f"gap longer than the bridge limit ({chosen.bridge_s:g} s; [facility] flux_gap_s or --flux-gap) or a "
            "counter reset there"
        )
        return
    if e.no_factor_s > 0:
        run.excluded = True
        run.exclude_reason = (
            f"no counts-to-flux factor in force for {e.no_factor_s:.0f} s of the run ({_iso(a)}..{_iso(b)} UTC): it "
            "starts before the first [facility] flux_factors date; add an earlier date or an undated flux_factor"
        )
        return
    if method == "integrated":
        run.fluence_n_cm2 = e.fluence
    else:  # the reference parsers: mean flux over the run's window x accumulated kernel time
        run.fluence_n_cm2 = e.mean_flux * run.kernel_time_s if e.window_s > 0 else 0.0
    if not math.isfinite(run.fluence_n_cm2):
        run.excluded = True
        run.exclude_reason = f"the fluence computed for this run is not a number ({run.fluence_n_cm2})"


def _names(log: FluxLog) -> str:
    return ", ".join(Path(f).name for f in log.files) if log.files else Path(log.path).name


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S")
