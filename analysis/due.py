"""Root causes of DUEs and the recovery that ended them, from what a campaign leaves behind.

Sources, each optional:

- the log text a DUT wrote last (the lines after its last ``#IT``/``#SDC``): CUDA errors as benchmarks print
  them (``unspecified launch failure``, ``an illegal memory access was encountered``, ``uncorrectable ECC error
  encountered``...), in the DUT's own file or the server's copy;
- console captures (``<dut>.console.log``, written by ``diehard serve`` with a UTC time stamp per line): kernel
  messages around the DUE, e.g. ``NVRM: Xid (PCI:0000:01:00): 48, ... double bit error``, ``Kernel panic - not
  syncing``, ``BUG: soft lockup``, and the boot banner of a reboot;
- the server's closing marker (``#SERVER_DUE:soft APP reboot`` / ``soft OS reboot`` / ``power cycle``, our
  ``#INF DUE cause:<cause> action:<action>``): what the server saw and the first recovery it tried;
- the campaign journal: every escalation step, so the recovery that finally ended the DUE (an app restart that
  did not bring the benchmark back escalates to a reboot, then a power cycle).

Root causes, the first that matches (most specific first): ``kernel-panic``, ``kernel-lockup``,
``gpu-ecc-uncorrectable``, ``gpu-xid`` (other Xid codes; the code is in the detail), ``cuda-illegal-address``,
``cuda-launch-failure``, ``cuda-error``, ``app-signal`` (segmentation fault, abort); without any text:
``crash-no-output`` (the process died), ``hang-no-output`` (silent app or host), ``unknown``.
Recovery levels: ``app-restart`` < ``os-reboot`` < ``power-cycle`` < ``broken`` (the board was given up), or
``unknown`` when nothing recorded it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

UTC = timezone.utc

ROOT_CAUSES: list[tuple[str, re.Pattern[str]]] = [
    ("kernel-panic", re.compile(r"kernel panic|not syncing|\bOops\b|BUG: unable to handle|BUG: kernel NULL", re.I)),
    ("kernel-lockup", re.compile(
        r"soft lockup|hard LOCKUP|rcu_\w+ (?:self-)?detected stall|blocked for more than", re.I)),
    ("gpu-ecc-uncorrectable", re.compile(
        r"uncorrectable ECC|double bit error|\bDBE\b|Xid \(PCI:[^)]*\):\s*(?:48|63|64|92|94|95)\b", re.I)),
    ("gpu-xid", re.compile(r"NVRM: Xid(?: \(PCI:[^)]*\):\s*\d+)?", re.I)),
    ("cuda-illegal-address", re.compile(r"illegal memory access|illegal address|misaligned address", re.I)),
    ("cuda-launch-failure", re.compile(
        r"unspecified launch failure|launch timed out|illegal instruction was encountered|hardware stack error|"
        r"invalid program counter|CUDA_ERROR_LAUNCH_FAILED", re.I)),
    ("cuda-error", re.compile(r"\bCUDA error|cudaError\w*|CUDA_ERROR_\w+|CUBLAS_STATUS_\w+|CUDNN_STATUS_\w+|"
                              r"device-side assert", re.I)),
    ("app-signal", re.compile(r"Segmentation fault|SIGSEGV|SIGBUS|SIGABRT|core dumped|Aborted \(core", re.I)),
]  # fmt: skip
NO_TEXT = {"app-crash": "crash-no-output", "app-hang": "hang-no-output", "os-hang": "hang-no-output"}
_XID = re.compile(r"Xid \(PCI:[^)]*\):\s*(\d+)", re.I)
_BOOT = re.compile(r"Linux version \d|Booting Linux|U-Boot \d|Starting kernel", re.I)
_PROGRESS = re.compile(r"^(?:\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)? )?#(?:IT|SDC) ")
_DUT_TEXT = re.compile(r"^(?:\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)? )?#(?:ERR|INF) ")
_CONSOLE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))? ?(.*)$")

LEVELS = ("app-restart", "os-reboot", "power-cycle", "broken")
# What the server did (our #INF DUE action, journal events) and radiation-setup's markers -> recovery level.
ACTION_LEVEL = {"app-restart": "app-restart", "os-reboot": "os-reboot", "power-cycle": "power-cycle",
                "cool-down": "power-cycle", "broken": "broken"}  # fmt: skip
MARKER_LEVEL = {"soft app reboot": "app-restart", "soft os reboot": "os-reboot", "power cycle": "power-cycle"}
TAIL_BYTES = 16 * 1024
CONSOLE_BEFORE_S = 60.0  # console lines this long before a DUE's last DUT line belong to it...
CONSOLE_AFTER_S = 900.0  # ...and after it, until the next run of the board starts (at most this long)


def classify_text(lines: Iterable[str]) -> tuple[str, str] | None:
    """(root cause, the line that shows it) of the most specific cause in ``lines``, or None."""
    best: tuple[int, str, str] | None = None
    for line in lines:
        for rank, (cause, pat) in enumerate(ROOT_CAUSES):
            if best is not None and rank >= best[0]:
                break
            m = pat.search(line)
            if m:
                detail = line.strip()[:160]
                x = _XID.search(line)
                if x:
                    detail = f"Xid {x.group(1)}: {detail}"
                best = (rank, cause, detail)
                break
    return None if best is None else (best[1], best[2])


def log_tail(path: str | Path) -> list[str]:
    """The lines a log ends with after its last progress record (#IT/#SDC): where a benchmark prints the
    error that stopped it. Only #ERR/#INF text counts (never the server's own lines)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = text.split("\n")
    last = max((i for i, ln in enumerate(lines) if _PROGRESS.match(ln)), default=-1)
    return [ln for ln in lines[last + 1 :] if _DUT_TEXT.match(ln) and "DUE cause:" not in ln and " SERVER " not in ln]


@dataclass
class Console:
    """A console capture: (UTC time, text) per line, and the board it belongs to."""

    path: str
    board: str
    lines: list[tuple[datetime, str]] = field(default_factory=list)

    def between(self, a: datetime, b: datetime) -> list[str]:
        return [text for t, text in self.lines if a <= t <= b]


def read_console(path: str | Path, board: str) -> Console:
    out = Console(str(path), board)
    try:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
            for raw in f:
                m = _CONSOLE.match(raw.rstrip("\r\n"))
                if not m:
                    continue
                g = m.groups()
                try:
                    t = datetime(*(int(x) for x in g[:6]), int((g[6] or "0").ljust(6, "0")), tzinfo=UTC)
                except ValueError:
                    continue
                out.lines.append((t, g[7]))
    except OSError:
        pass
    return out


@dataclass
class Episode:
    """One DUE as the journal saw it: detected at ``time`` for ``cause``, and the recovery steps that followed."""

    board: str
    time: datetime
    cause: str
    actions: list[str] = field(default_factory=list)
    until: datetime | None = None  # the next benchmark start on that board

    @property
    def level(self) -> str:
        levels = [ACTION_LEVEL[a] for a in self.actions if a in ACTION_LEVEL]
        return max(levels, key=LEVELS.index) if levels else "unknown"


def episodes(records: Sequence[dict]) -> dict[str, list[Episode]]:
    """The DUE episodes of a campaign journal, per DUT name, in time order."""
    out: dict[str, list[Episode]] = {}
    open_: dict[str, Episode] = {}
    for rec in records:
        dut, ev = rec.get("dut"), rec.get("event")
        if not isinstance(dut, str) or not isinstance(ev, str):
            continue
        when = _iso(rec.get("time"))
        if when is None:
            continue
        if ev in ("crash-detected", "hang-detected"):
            ep = Episode(dut, when, str(rec.get("cause") or ("app-crash" if ev == "crash-detected" else "app-hang")))
            out.setdefault(dut, []).append(ep)
            open_[dut] = ep
        elif ev in ACTION_LEVEL and dut in open_:
            open_[dut].actions.append(ev)
        elif ev == "benchmark-start" and dut in open_:
            open_.pop(dut).until = when
    return out


def _iso(text) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def read_journal_episodes(path: Path) -> dict[str, list[Episode]]:
    from diehardlab.watchdog.journal import read_journal  # the watchdog's reader: a torn last line is skipped

    return episodes(read_journal(path))


@dataclass
class DueCause:
    root_cause: str
    detail: str
    source: str  # where the root cause was read
    recovery: str
    recovery_source: str


def marker_level(reason: str | None, action: str | None) -> str | None:
    if action and action in ACTION_LEVEL:
        return ACTION_LEVEL[action]
    if reason:
        return MARKER_LEVEL.get(reason.strip().lower())
    return None


def explain(
    detected: str,
    texts: Sequence[tuple[str, Sequence[str]]],
    console: Console | None,
    window: tuple[datetime, datetime] | None,
    episode: Episode | None,
    marker: str | None,
) -> DueCause:
    """Root cause and recovery of one DUE.

    ``detected``: the cause the server or the log gave (app-crash, app-hang, os-hang, ...); ``texts``: (source,
    lines) of log text; ``window``: the UTC span of console lines that belong to this DUE; ``marker``: the
    recovery level the server copy's closing lines name."""
    root = detail = source = ""
    for src, lines in texts:
        hit = classify_text(lines)
        if hit:
            root, detail = hit
            source = src
            break
    boot = False
    if console is not None and window is not None:
        lines = console.between(*window)
        hit = classify_text(lines)
        # The kernel's account outranks a benchmark's CUDA message about the same failure.
        if hit and (not root or _rank(hit[0]) < _rank(root)):
            root, detail = hit
            source = f"console {Path(console.path).name}"
        boot = any(_BOOT.search(x) for x in lines)
    if not root:
        root = NO_TEXT.get(episode.cause if episode else detected, "unknown")
        if root == "unknown" and detected in NO_TEXT:
            root = NO_TEXT[detected]
        source = "journal" if episode else ("server" if detected in NO_TEXT else "")
    if episode is not None and episode.level != "unknown":
        recovery, rsource = episode.level, "journal"
    elif marker:
        recovery, rsource = marker, "server copy"
    elif boot:
        recovery, rsource = "os-reboot", f"console {Path(console.path).name} (boot banner)" if console else ""
    else:
        recovery, rsource = "unknown", ""
    return DueCause(root, detail, source, recovery, rsource)


def _rank(cause: str) -> int:
    return next((i for i, (c, _) in enumerate(ROOT_CAUSES) if c == cause), len(ROOT_CAUSES))


def console_window(end: datetime, next_start: datetime | None, episode: Episode | None) -> tuple[datetime, datetime]:
    stop = end + timedelta(seconds=CONSOLE_AFTER_S)
    for t in (next_start, episode.until if episode else None):
        if t is not None and t > end:
            stop = min(stop, t)
    return end - timedelta(seconds=CONSOLE_BEFORE_S), stop
