"""A faster one-pass log summary for the analysis, giving exactly what ``diehardlab.formats.parser.summarize``
gives (the tests check the two agree on every sample).

Most lines of a long campaign log are ``#IT`` progress lines and ``#ERR`` detail lines. Those two are
read here with one anchored regex or a prefix test and folded straight into the summary; every other
line (``#SDC``, ``#BEGIN``, server markers, prefixed lines, anything odd) goes through the foundation
parser unchanged, so the grammar lives in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from diehardlab.formats.filename import parse_log_name
from diehardlab.formats.parser import (
    Begin,
    Header,
    InfCount,
    InfDetail,
    Iteration,
    LogParser,
    LogSummary,
    Sdc,
    ServerEnd,
    _fold,
    read_lines,
)

# The common #IT forms (v2 and old) on a whole line, with plain decimal numbers: a strict subset of what
# LogParser accepts (no alternation, so it is cheaper); any other #IT line goes through LogParser itself.
_DEC = r"(\d+\.?\d*(?:[eE][-+]?\d+)?)"
_IT_LINE = re.compile(r"#IT (?:Ite:)?(\d+) +KerTime:" + _DEC + r" +AccTime:" + _DEC + r"\s*$")
# #INF lines starting with these may be counts (Ite:), DUE causes, our clock line or a STOP reason.
_INF_SPECIAL = ("I", "D", "d", "S", "")


@dataclass(slots=True)
class Scan:
    summary: LogSummary
    dnn_details: bool  # the log has diehardnet detail lines (#ERR batch:...): critical/tolerable is meaningful
    last_dut_stamp: datetime | None = None  # server copies: receive time of the last line the DUT sent


def scan(path: str | Path, max_examples: int = 20) -> Scan:
    path = Path(path)
    s = LogSummary(path=str(path))
    name = parse_log_name(path)
    if name:
        s.benchmark, s.hostname, s.ecc, s.name_time = name.benchmark, name.hostname, name.ecc, name.started
    lines = read_lines(path)
    s.lines = len(lines)
    parser = LogParser()
    it_match = _IT_LINE.match
    fast_last = None  # the last #IT match, while it is the last timed record
    dnn = False
    # Counters kept in locals (faster than attributes) and added at the end; the slow path adds its own.
    it_lines = err_lines = crit_lines = inf_lines = 0
    top = -1  # the largest fast #IT iteration
    first = True  # no fast #IT seen yet
    last_dut = None
    for lineno, line in enumerate(lines, 1):
        m = it_match(line)
        if m is not None:
            it_lines += 1
            it = int(m[1])
            if it > top:
                top = it
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
        if rec.stamp is not None and not _server_line(rec):
            last_dut = rec.stamp
        _fold(s, rec, max_examples)
    if fast_last is not None:
        s.last_acc_time = float(fast_last[3])
    if top >= 0:
        s.last_iteration = top if s.last_iteration is None else max(s.last_iteration, top)
    s.it_lines += it_lines
    s.err_lines += err_lines
    s.critical_err_lines += crit_lines
    s.inf_lines += inf_lines
    return Scan(s, dnn, last_dut)


def _server_line(rec) -> bool:
    """Lines the server writes itself into its copy (not received from the DUT)."""
    t = type(rec)
    if t is ServerEnd:
        return True
    if t in (Header, Begin):
        return rec.server
    return t is InfDetail and rec.text.startswith("DUE cause:")
