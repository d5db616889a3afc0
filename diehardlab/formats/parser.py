"""A streaming parser for every libLogHelper log variant, and a one-pass summary of a log file.

Variants read (FORMATS.md section 1): v2 ``#IT <n>`` and old ``#IT Ite:<n>``; ``#SDC Ite:..`` and the
2015 ``#SDC 2015_11_19;  size:1024; 1``; server markers (``#SERVER_HEADER``, ``#SERVER_BEGIN``,
``#SERVER_END``, ``#SERVER_DUE:<reason>``, ``#SERVER_UNKNOWN``) and ``#LOGFILE``; the optional ISO
timestamp prefix on any line; files that start mid-run, that end without a newline or mid-line;
free-form ``#ERR``/``#INF`` text; the diehardnet detail lines.

It never raises on content: a line it cannot read becomes an :class:`Unparsed` record with its line
number. Markers are matched at the start of the line (after the optional prefix); substring matching,
as some reference parsers do (``.*END.*``), miscounts.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from diehardlab.formats.filename import parse_log_name

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))"
_IT = re.compile(r"(?:Ite:)?(\d+) +KerTime:" + _NUM + r" +AccTime:" + _NUM + r"\s*$")
_SDC = re.compile(r"Ite:(\d+) +KerTime:" + _NUM + r" +AccTime:" + _NUM + r" +KerErr:(\d+) +AccErr:(\d+)\s*$")
_SDC_2015 = re.compile(r"(\d{4}_\d{2}_\d{2})\s*;(.*);\s*(\d+)\s*$")
_INF_COUNT = re.compile(r"Ite:(\d+) +KerTime:" + _NUM + r" +AccTime:" + _NUM + r" +KerInf:(\d+)\s*$")
_BEGIN = re.compile(r"Y:(\d{4}) +M:(\d{1,2}) +D:(\d{1,2}) +(?:Time|TIME):(\d{1,2}):(\d{1,2}):(\d{1,2})(?:-(\d+))?")
_SERVER_TIME = re.compile(r"TIME:(\d{4})-(\d{1,2})-(\d{1,2})-(\d{1,2})-(\d{1,2})-(\d{1,2})")
_PREFIX = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))? (?=#)")
_DUE_INF = re.compile(r"DUE cause:(\S+)(?: action:(\S+))?")
_CLOCK_INF = re.compile(r"diehardlab version:(\S+) clock:(\S+)")


# -- records ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    lineno: int
    stamp: datetime | None  # the ISO prefix, when the line has one


@dataclass(slots=True)
class Header(Record):
    text: str
    server: bool = False  # #SERVER_HEADER


@dataclass(slots=True)
class Begin(Record):
    when: datetime | None
    server: bool = False  # #SERVER_BEGIN


@dataclass(slots=True)
class Iteration(Record):
    iteration: int
    kernel_time: float
    acc_time: float


@dataclass(slots=True)
class Sdc(Record):
    iteration: int | None  # None in the 2015 form
    kernel_time: float | None
    acc_time: float | None
    kernel_errors: int
    acc_errors: int | None
    critical: bool  # a diehardnet critical-img #ERR came since the previous #SDC


@dataclass(slots=True)
class ErrDetail(Record):
    text: str
    critical: bool  # diehardnet "critical-img" line


@dataclass(slots=True)
class InfDetail(Record):
    text: str


@dataclass(slots=True)
class InfCount(Record):
    iteration: int
    kernel_time: float
    acc_time: float
    count: int


@dataclass(slots=True)
class Abort(Record):
    reason: str


@dataclass(slots=True)
class End(Record):
    pass


@dataclass(slots=True)
class ServerEnd(Record):
    """The closing line of a server copy: ``status`` is "end", "due" or "unknown"."""

    status: str
    reason: str | None
    when: datetime | None


@dataclass(slots=True)
class LogFile(Record):
    path: str


@dataclass(slots=True)
class Unparsed(Record):
    text: str
    why: str


# -- line parsing ------------------------------------------------------------------------------------------


def _dt(groups: Iterable[str | None]) -> datetime | None:
    vals = [int(g) if g else 0 for g in groups]
    try:
        return datetime(*vals[:6])
    except ValueError:
        return None


def _prefix_stamp(m: re.Match[str]) -> datetime | None:
    frac = m.group(7)
    when = _dt(m.groups()[:6])
    if when is not None and frac:
        when = when.replace(microsecond=int(frac.ljust(6, "0")))
    return when


class LogParser:
    """Turns lines into records, keeping the state that classifies ``#SDC`` records (critical or not)."""

    def __init__(self) -> None:
        self._critical_pending = False

    def parse(self, lines: Iterable[str]) -> Iterator[Record]:
        for lineno, raw in enumerate(lines, 1):
            rec = self.parse_line(raw, lineno)
            if rec is not None:
                yield rec

    def parse_line(self, raw: str, lineno: int) -> Record | None:
        line = raw.rstrip("\r\n")
        if not line.strip():
            return None
        stamp = None
        if line[0] != "#":
            m = _PREFIX.match(line)
            if not m:
                return Unparsed(lineno, None, line, "no marker")
            stamp = _prefix_stamp(m)
            line = line[m.end() :]
        marker, _, rest = line.partition(" ")
        if marker == "#IT":
            m = _IT.match(rest)
            if m:
                return Iteration(lineno, stamp, int(m.group(1)), float(m.group(2)), float(m.group(3)))
            return Unparsed(lineno, stamp, line, "bad #IT")
        if marker == "#ERR":
            critical = "critical-img:" in rest
            if critical:
                self._critical_pending = True
            return ErrDetail(lineno, stamp, rest, critical)
        if marker == "#SDC":
            critical, self._critical_pending = self._critical_pending, False
            m = _SDC.match(rest)
            if m:
                g = m.groups()
                return Sdc(lineno, stamp, int(g[0]), float(g[1]), float(g[2]), int(g[3]), int(g[4]), critical)
            m = _SDC_2015.match(rest)
            if m:
                return Sdc(lineno, stamp, None, None, None, int(m.group(3)), None, critical)
            return Unparsed(lineno, stamp, line, "bad #SDC")
        if marker == "#INF":
            if rest.startswith("Ite:"):
                m = _INF_COUNT.match(rest)
                if m:
                    g = m.groups()
                    return InfCount(lineno, stamp, int(g[0]), float(g[1]), float(g[2]), int(g[3]))
            return InfDetail(lineno, stamp, rest)
        if marker == "#HEADER":
            return Header(lineno, stamp, rest)
        if marker == "#BEGIN":
            m = _BEGIN.search(rest)
            return Begin(lineno, stamp, _dt(m.groups()) if m else None)
        if marker == "#ABORT":
            return Abort(lineno, stamp, rest.strip())
        if marker == "#END":
            return End(lineno, stamp) if not rest.strip() else Unparsed(lineno, stamp, line, "text after #END")
        if marker.startswith("#SERVER_"):
            return self._server(marker, rest, lineno, stamp, line)
        if marker == "#LOGFILE":
            return LogFile(lineno, stamp, rest.strip())
        return Unparsed(lineno, stamp, line, f"unknown marker {marker[:20]!r}")

    @staticmethod
    def _server(marker: str, rest: str, lineno: int, stamp: datetime | None, line: str) -> Record:
        if marker == "#SERVER_HEADER":
            return Header(lineno, stamp, rest, server=True)
        if marker == "#SERVER_BEGIN":
            m = _BEGIN.search(rest)
            when = _dt(m.groups()) if m else None
            if when is not None and m and m.group(7):
                when = when.replace(microsecond=min(int(m.group(7)), 999_999))
            return Begin(lineno, stamp, when, server=True)
        m = _SERVER_TIME.search(line)
        when = _dt(m.groups()) if m else None
        if marker == "#SERVER_END":
            return ServerEnd(lineno, stamp, "end", None, when)
        if marker == "#SERVER_UNKNOWN":
            return ServerEnd(lineno, stamp, "unknown", None, when)
        if marker.startswith("#SERVER_DUE:"):
            head = line[len("#SERVER_DUE:") :]
            reason = head[: m.start() - len("#SERVER_DUE:")].strip() if m else head.strip()
            return ServerEnd(lineno, stamp, "due", reason, when)
        return Unparsed(lineno, stamp, line, f"unknown server marker {marker[:24]!r}")


def read_lines(path: str | Path) -> list[str]:
    """A log's lines, decoded leniently: real logs hold stray bytes and may end mid-line."""
    return [line for block in line_blocks(path) for line in block]


def line_blocks(path: str | Path, chunk: int = 1 << 20) -> Iterator[list[str]]:
    """A log's lines (without their ``\n``) in blocks of about ``chunk`` bytes, so a log of any size is read in
    bounded memory at the speed of reading it whole. Lines end at ``\n`` only (a stray ``\r`` stays in its
    line); bytes that are not UTF-8 are replaced, also when a character is split between two blocks."""
    decode = codecs.getincrementaldecoder("utf-8")("replace").decode
    rest = ""
    with open(path, "rb") as f:
        while data := f.read(chunk):
            lines = (rest + decode(data)).split("\n")
            rest = lines.pop()
            yield lines
    rest += decode(b"", True)
    if rest:
        yield [rest]


def iter_lines(path: str | Path) -> Iterator[str]:
    """A log's lines one at a time, without their ``\n`` (see :func:`line_blocks`)."""
    for block in line_blocks(path):
        yield from block


def parse_file(path: str | Path) -> Iterator[Record]:
    return LogParser().parse(iter_lines(path))


# -- summary -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SdcEvent:
    lineno: int
    iteration: int | None
    acc_time: float | None
    kernel_errors: int
    critical: bool
    stamp: datetime | None


@dataclass(slots=True)
class LogSummary:
    """What a log says, in one pass. Times are naive, on the clock of ``clock`` (None = not stated)."""

    path: str
    benchmark: str | None = None
    hostname: str | None = None
    ecc: str | None = None
    name_time: datetime | None = None
    header: str | None = None
    server_header: str | None = None
    begin: datetime | None = None
    server_begin: datetime | None = None
    clock: str | None = None  # "UTC" when our writer says so
    first_iteration: int | None = None
    last_iteration: int | None = None
    first_acc_time: float | None = None  # AccTime - KerTime of the first timed record: kernel time before this file
    last_acc_time: float | None = None
    it_lines: int = 0
    err_lines: int = 0
    critical_err_lines: int = 0
    inf_lines: int = 0
    sdc: list[SdcEvent] = field(default_factory=list)
    aborted: str | None = None
    ended: bool = False
    server_end: str | None = None  # "end", "due" or "unknown"
    due_reason: str | None = None  # the #SERVER_DUE text
    due_cause: str | None = None  # our #INF DUE cause
    server_end_time: datetime | None = None
    first_stamp: datetime | None = None
    last_stamp: datetime | None = None
    stop_reason: str | None = None
    logfile: str | None = None
    lines: int = 0
    unparsed: int = 0
    unparsed_examples: list[tuple[int, str, str]] = field(default_factory=list)
    dnn_details: bool = False  # diehardnet detail lines (#ERR batch:...): critical/tolerable is meaningful
    last_dut_stamp: datetime | None = None  # server copies: receive time of the last line the DUT sent
    # (iteration, AccTime) of timed records, a fingerprint of the run: the first MARKS of them and those of every
    # SAMPLE-th iteration (at most MAX_MARKS in all). Copies of one run share them; two runs do not.
    marks: list[tuple[int, float]] = field(default_factory=list)

    @property
    def sdc_count(self) -> int:
        return len(self.sdc)

    @property
    def critical_sdc(self) -> int | None:
        """SDC records with a diehardnet ``critical-img`` line; None (unknown) when the log has SDCs but no
        diehardnet detail lines: a generic benchmark's SDC is neither critical nor tolerable as far as we know."""
        if self.sdc and not self.dnn_details:
            return None
        return sum(1 for e in self.sdc if e.critical)

    @property
    def tolerable_sdc(self) -> int | None:
        if self.sdc and not self.dnn_details:
            return None
        return sum(1 for e in self.sdc if not e.critical)

    @property
    def iterations(self) -> int:
        if self.first_iteration is None or self.last_iteration is None:
            return 0
        return self.last_iteration - self.first_iteration + 1

    @property
    def kernel_time(self) -> float:
        """Kernel seconds covered by this file (a file that starts mid-run does not own the earlier ones)."""
        if self.last_acc_time is None or self.first_acc_time is None:
            return 0.0
        return max(0.0, self.last_acc_time - self.first_acc_time)

    @property
    def start(self) -> datetime | None:
        """Start as written: ``#BEGIN``, else ``#SERVER_BEGIN``, else the file name, else the first stamp."""
        return self.begin or self.server_begin or self.name_time or self.first_stamp


# The common #IT forms (v2 and old) on a whole line with plain decimal numbers: a strict subset of ``_IT``
# (no prefix, no inf/nan, no sign), cheaper to match. Any other #IT line goes through LogParser.parse_line.
_DEC = r"(\d+\.?\d*(?:[eE][-+]?\d+)?)"
_IT_FAST = re.compile(r"#IT (?:Ite:)?(\d+) +KerTime:" + _DEC + r" +AccTime:" + _DEC + r"\s*$")
# #INF lines starting with these may be counts (Ite:), DUE causes, our clock line or a STOP reason.
_INF_SPECIAL = ("I", "D", "d", "S", "")
MARKS, SAMPLE, MAX_MARKS = 64, 97, 1024


def _mark(marks: list[tuple[int, float]], iteration: int, acc_time: float) -> None:
    n = len(marks)
    if n < MARKS or (iteration % SAMPLE == 0 and n < MAX_MARKS):
        marks.append((iteration, acc_time))


def summarize(path: str | Path, max_examples: int = 20) -> LogSummary:
    """Read a log file once and collect everything the inventory and the analysis need.

    Gives exactly what folding every record of :func:`parse_file` with ``_fold`` gives (the tests check
    it), but faster: most lines of a long log are ``#IT`` progress and ``#ERR`` detail lines, which are
    folded here straight from one anchored regex or a prefix test, without building records. Every other
    line (``#SDC``, ``#BEGIN``, server markers, prefixed lines, anything odd) goes through the record parser.
    """
    path = Path(path)
    s = LogSummary(path=str(path))
    name = parse_log_name(path)
    if name:
        s.benchmark, s.hostname, s.ecc, s.name_time = name.benchmark, name.hostname, name.ecc, name.started
    parser = LogParser()
    it_match = _IT_FAST.match
    fast_last = None  # the last fast #IT match, while it is the last timed record
    # Counters kept in locals (faster than attributes) and added at the end; the record path adds its own.
    it_lines = err_lines = crit_lines = inf_lines = 0
    top = -1  # the largest fast #IT iteration
    first = True  # no fast #IT seen yet
    dnn = False
    marks = s.marks
    lines = 0
    for block in line_blocks(path):  # blocks of lines, not a generator per line: this loop is the hot path
        for lineno, line in enumerate(block, lines + 1):
            m = it_match(line)
            if m is not None:
                it_lines += 1
                it = int(m[1])
                if it > top:
                    top = it
                if len(marks) < MARKS or it % SAMPLE == 0:
                    _mark(marks, it, float(m[3]))
                if first:
                    first = False
                    if s.first_iteration is None:
                        s.first_iteration = it
                    if s.first_acc_time is None:
                        s.first_acc_time = float(m[3]) - float(m[2])
                fast_last = m
                continue
            head = line[:5]
            if head == "#ERR ":
                err_lines += 1
                if "critical-img:" in line:
                    crit_lines += 1
                    parser._critical_pending = True
                if not dnn and line.startswith("#ERR batch:"):
                    dnn = True
                continue
            if head == "#INF " and line[5:6] not in _INF_SPECIAL:
                inf_lines += 1  # free-form #INF text that carries nothing the summary keeps
                continue
            rec = parser.parse_line(line, lineno)
            if rec is None:
                continue
            if fast_last is not None and type(rec) in (Iteration, Sdc, InfCount) and rec.acc_time is not None:
                s.last_acc_time = float(fast_last[3])  # keeps _fold's order: this record comes later
                fast_last = None
            _fold(s, rec, max_examples)
        lines += len(block)
    s.lines = lines
    if fast_last is not None:
        s.last_acc_time = float(fast_last[3])
    if top >= 0:
        s.last_iteration = top if s.last_iteration is None else max(s.last_iteration, top)
    s.it_lines += it_lines
    s.err_lines += err_lines
    s.critical_err_lines += crit_lines
    s.inf_lines += inf_lines
    s.dnn_details = s.dnn_details or dnn
    return s


def _server_line(rec: Record) -> bool:
    """Lines the server writes itself into its copy (not received from the DUT)."""
    t = type(rec)
    if t is ServerEnd:
        return True
    if t in (Header, Begin):
        return rec.server  # type: ignore[attr-defined]
    return t is InfDetail and rec.text.startswith("DUE cause:")  # type: ignore[attr-defined]


def _timed(s: LogSummary, kernel_time: float | None, acc_time: float | None) -> None:
    if acc_time is None:
        return
    if s.first_acc_time is None:
        s.first_acc_time = acc_time - (kernel_time or 0.0)
    s.last_acc_time = acc_time


def _iter(s: LogSummary, iteration: int | None) -> None:
    if iteration is None:
        return
    if s.first_iteration is None:
        s.first_iteration = iteration
    s.last_iteration = iteration if s.last_iteration is None else max(s.last_iteration, iteration)


def _fold(s: LogSummary, rec: Record, max_examples: int) -> None:
    if rec.stamp is not None:
        if s.first_stamp is None:
            s.first_stamp = rec.stamp
        s.last_stamp = rec.stamp
        if not _server_line(rec):
            s.last_dut_stamp = rec.stamp
    t = type(rec)
    if t is Iteration:
        s.it_lines += 1
        _iter(s, rec.iteration)
        _timed(s, rec.kernel_time, rec.acc_time)
        _mark(s.marks, rec.iteration, rec.acc_time)
    elif t is ErrDetail:
        s.err_lines += 1
        s.critical_err_lines += rec.critical
        if rec.text.startswith("batch:"):
            s.dnn_details = True
    elif t is Sdc:
        s.sdc.append(SdcEvent(rec.lineno, rec.iteration, rec.acc_time, rec.kernel_errors, rec.critical, rec.stamp))
        _iter(s, rec.iteration)
        _timed(s, rec.kernel_time, rec.acc_time)
        if rec.iteration is not None and rec.acc_time is not None:
            _mark(s.marks, rec.iteration, rec.acc_time)
    elif t is InfDetail:
        s.inf_lines += 1
        if rec.text.startswith("DUE cause:"):
            m = _DUE_INF.match(rec.text)
            if m:
                s.due_cause = m.group(1)
        elif rec.text.startswith("diehardlab "):
            m = _CLOCK_INF.match(rec.text)
            if m:
                s.clock = m.group(2)
        elif rec.text.startswith("STOP reason:"):
            s.stop_reason = rec.text[len("STOP reason:") :]
    elif t is InfCount:
        s.inf_lines += 1
        _timed(s, rec.kernel_time, rec.acc_time)
    elif t is Header:
        if rec.server:
            s.server_header = rec.text
        elif s.header is None:
            s.header = rec.text
    elif t is Begin:
        if rec.server:
            s.server_begin = s.server_begin or rec.when
        elif s.begin is None:
            s.begin = rec.when
    elif t is Abort:
        s.aborted = rec.reason
    elif t is End:
        s.ended = True
    elif t is ServerEnd:
        s.server_end, s.server_end_time = rec.status, rec.when
        if rec.status == "due":
            s.due_reason = rec.reason
    elif t is LogFile:
        s.logfile = rec.path
    elif t is Unparsed:
        s.unparsed += 1
        if len(s.unparsed_examples) < max_examples:
            s.unparsed_examples.append((rec.lineno, rec.why, rec.text[:120]))
