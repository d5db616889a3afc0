"""The server's copy of a DUT log, rebuilt from its datagrams, with radiation-setup's server markers.

Named like the DUT's own file (from its ``#LOGFILE`` datagram, when that name carries the DUT's own host field;
libLogHelper-style name otherwise), it holds ``#SERVER_HEADER <json>``, ``#SERVER_BEGIN ...``, every line
received, and one closing line: ``#SERVER_END`` when the run ended normally, or ``#INF DUE cause:<cause>
action:<action>`` followed by ``#SERVER_DUE:<what the server did>`` when the server had to act. Every line
carries the ISO receive-time prefix (``YYYY-MM-DD HH:MM:SS.mmm``) that the parser understands, so the copy keeps
when each line arrived.

A copy only ever appends to a file of its own DUT: a name already taken by another DUT's copy (or by anything
that is not a copy of this DUT) gets the next free second in its time stamp instead.

When the disk refuses a write, the copy skips the benchmark's lines (the DUT keeps its own log, pulled later)
and holds its own markers (header, begin, closing line) in memory; when writes work again it writes them and
``#INF SERVER skipped <n> lines ...``, so the copy says what it lacks.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from diehardlab.watchdog.storage import Storage, append

from diehardlab.formats import grammar
from diehardlab.formats.filename import format_log_name, parse_log_name

# What the server did -> radiation-setup's closing marker.
ACTION_MARKERS = {
    "app-restart": grammar.SERVER_DUE_APP,
    "os-reboot": grammar.SERVER_DUE_OS,
    "power-cycle": grammar.SERVER_DUE_POWER,
    "cool-down": grammar.SERVER_DUE_POWER,
    "broken": grammar.SERVER_UNKNOWN,
}
_CLOSING = (grammar.SERVER_END, grammar.SERVER_UNKNOWN, "#SERVER_DUE:")
_PREFIX = len("YYYY-MM-DD HH:MM:SS.mmm ")  # grammar.iso_prefix


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def copy_owner(path: Path) -> str | None:
    """The DUT named in the ``#SERVER_HEADER`` of an existing copy (None when it is not a server copy)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096).decode("ascii", "replace")
    except OSError:
        return None
    head, sep, doc = first.partition("#SERVER_HEADER ")
    if not sep or len(head) > 30:
        return None
    try:
        owner = json.loads(doc).get("dut")
    except (ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def benchmark_ended(path: Path) -> bool:
    """Whether a copy holds the benchmark's own #END or #ABORT near its end (its run ended by itself)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            tail = f.read().decode("ascii", "replace")
    except OSError:
        return False
    return any(ln[_PREFIX:].startswith(("#END", "#ABORT")) for ln in tail.splitlines())


def free_name(log_dir: Path, name: str, dut: str) -> str:
    """``name``, or when another DUT (or anything else) holds that file, the same name one second later..."""
    path = log_dir / name
    if not path.exists() or copy_owner(path) == dut:
        return name
    parsed = parse_log_name(name)
    for k in range(1, 1000):
        if parsed is not None:
            ecc = parsed.ecc == "ON"
            cand = format_log_name(parsed.started + timedelta(seconds=k), parsed.benchmark, ecc, parsed.hostname)
        else:
            cand = f"{name.removesuffix('.log')}-{k}.log"
        if not (log_dir / cand).exists() or copy_owner(log_dir / cand) == dut:
            return cand
    raise FileExistsError(f"{log_dir}: no free name near {name}")


class ServerCopy:
    def __init__(self, log_dir: Path, name: str, header: dict[str, Any], storage: Storage | None = None):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.dut = str(header.get("dut", ""))
        self.path = log_dir / free_name(log_dir, Path(name).name, self.dut)
        self.storage = storage or Storage()
        self.lines = 0
        self.closed = False
        self.skipped = 0  # the benchmark's lines dropped while the disk refused them
        self._skip_since: datetime | None = None
        self._held: list[str] = []  # our own markers, written when the disk takes them again
        self._fd = -1
        self._open()
        self._write("#SERVER_HEADER " + json.dumps(header, sort_keys=True, separators=(",", ":")) + "\n", own=True)
        self._write(grammar.server_begin_line(_now()), own=True)

    @classmethod
    def reopen(cls, path: Path, storage: Storage | None = None) -> ServerCopy | None:
        """An existing copy, to close it (a server that died left it open); None when it is gone or closed."""
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 400))
                tail = f.read().decode("ascii", "replace").rstrip("\n").rpartition("\n")[2]
        except OSError:
            return None
        body = tail[_PREFIX:] if tail[:4].isdigit() else tail  # after the ISO receive-time prefix
        if body.startswith(_CLOSING):
            return None
        self = cls.__new__(cls)
        self.path, self.dut, self.storage = path, copy_owner(path) or "", storage or Storage()
        self.lines, self.closed, self.skipped, self._skip_since, self._held = 0, False, 0, None, []
        self._fd = -1
        self._open()
        return self

    # -- writing ---------------------------------------------------------------------------------------------

    def _open(self) -> bool:
        if self._fd >= 0:
            return True
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            return True
        except OSError as exc:
            self._failed(exc)
            return False

    def _failed(self, exc: OSError) -> None:
        if self._skip_since is None:
            self._skip_since = _now()
            self.storage.failed(self.path, exc)
            self.storage.hold(self._recover, self._abandon)

    def _emit(self, text: str) -> bool:
        if not self._open():
            return False
        data = (grammar.iso_prefix(_now()) + text).encode("ascii", "replace")
        try:
            append(self._fd, data)  # (two runs of one DUT in the same second share one file)
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _write(self, text: str, own: bool = False) -> None:
        """One line; ``own``: a server marker, held while the disk refuses it (a benchmark's line is skipped)."""
        if not text.endswith("\n"):
            text += "\n"
        if self._skip_since is None and self._emit(text):
            return
        if own:
            self._held.append(grammar.iso_prefix(_now()) + text)
        else:
            self.skipped += 1

    def _recover(self) -> bool:
        """Write what was held back (the storage's retry calls this); True when the copy is whole again."""
        if self._skip_since is None:
            return True
        if not self._open():
            return False
        since = self._skip_since.isoformat(sep=" ", timespec="seconds")
        note = f"#INF SERVER skipped {self.skipped} lines (disk full or write error since {since} UTC)\n"
        # held lines carry their own receive times; the note goes after the opening markers, before the rest
        opening = [h for h in self._held if h[_PREFIX:].startswith(("#SERVER_HEADER", "#SERVER_BEGIN"))]
        rest = [h for h in self._held if h not in opening]
        parts = opening + ([grammar.iso_prefix(_now()) + note] if self.skipped else []) + rest
        data = "".join(parts).encode("ascii", "replace")
        try:
            append(self._fd, data)
            if self.closed:
                os.fsync(self._fd)
        except OSError:
            return False
        self._held, self.skipped, self._skip_since = [], 0, None
        if self.closed:
            self._release()
        return True

    def _abandon(self) -> None:
        """The server stops while the disk still refuses this copy: close it, and remove it when it holds nothing
        (a copy with no header is no copy; the DUT's own log keeps the run)."""
        with contextlib.suppress(OSError):
            if self._fd >= 0 and os.fstat(self._fd).st_size == 0:
                self.path.unlink()
        self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def rename(self, name: str, dut_path: str | None = None) -> bool:
        """Take the DUT's log name before any line arrived (kept as it is when that name is already taken)."""
        target = self.path.with_name(Path(name).name)
        if target == self.path or target.exists():
            return False
        try:
            os.rename(self.path, target)
        except OSError:
            return False
        self.path = target
        if dut_path:
            self._write(f"#INF SERVER dut_log:{dut_path}", own=True)
        return True

    def line(self, text: str) -> None:
        if self.closed:
            return
        self._write(text)
        self.lines += 1

    def note(self, text: str) -> None:
        """A line of the server's own (``#INF SERVER ...``), kept even when the disk is full."""
        if not self.closed:
            self._write(text, own=True)

    def close(self, action: str | None = None, cause: str | None = None) -> None:
        """``action`` None: a normal end (``#SERVER_END``); else the recovery the server started."""
        if self.closed:
            return
        when = grammar.server_time(_now())
        if action is None:
            self._write(f"{grammar.SERVER_END} {when}", own=True)
        else:
            self._write(f"#INF DUE cause:{cause or 'unknown'} action:{action}", own=True)
            self._write(f"{ACTION_MARKERS.get(action, grammar.SERVER_UNKNOWN)} {when}", own=True)
        self._finish()

    def close_leftover(self, reason: str, ended: bool) -> None:
        """Close a copy that a server which died left open: ``#SERVER_END`` when the run is known to have been
        fine (its benchmark was still running, or it wrote ``#END``), else ``#SERVER_UNKNOWN`` (the DUT's own
        log decides); both after ``#INF SERVER end reason:<reason>``, and neither is a DUE the server saw."""
        if self.closed:
            return
        self._write(f"#INF SERVER end reason:{reason}", own=True)
        marker = grammar.SERVER_END if ended else grammar.SERVER_UNKNOWN
        self._write(f"{marker} {grammar.server_time(_now())}", own=True)
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        if self._skip_since is not None:
            return  # the storage's retry writes the held lines and closes the file
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._failed(exc)
                return
        self._release()

    def sync(self) -> None:
        if not self.closed and self._fd >= 0 and self._skip_since is None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._failed(exc)

    @property
    def complete(self) -> bool:
        """Everything written (False while the disk holds back some of it)."""
        return self._skip_since is None
