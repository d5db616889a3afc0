"""The campaign journal: one JSON object per line, appended and fsynced at every state change.

Each line has ``time`` (UTC ISO 8601), ``mono`` (the server's monotonic clock, seconds), ``event`` and ``dut``
(None for server-wide events). Supervisor events also carry ``snap``: the DUT's counters, benchmark and
rotation position at that moment, so a restarted server resumes from the last snapshot of each DUT.
A record torn by a crash of the server (cut anywhere, even right after a nested ``}``) is ignored when reading.

A write that fails (a full disk) never reaches the caller: the record is held in memory, in order, and written
with the ones after it as soon as the disk takes it again (:class:`~diehardlab.watchdog.storage.Storage`
reports the episode once). A journal closed while records are still held prints them on stderr.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diehardlab.watchdog.storage import Storage, append

from diehardlab.errors import DataError

MAX_HELD = 100_000  # records kept in memory while the disk is full (a campaign journals a few per minute)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    """Append-only JSON-lines journal. ``write`` returns after the line is on disk (fsync), or held in memory
    when the disk refuses it."""

    def __init__(self, path: str | Path, storage: Storage | None = None):
        self.path = Path(path)
        self.storage = storage or Storage()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._held: collections.deque[bytes] = collections.deque()
        self.dropped = 0  # records lost because more than MAX_HELD were held
        self._size = os.fstat(self._fd).st_size
        # A previous server killed mid-write leaves a line without its newline: end it, so ours start clean.
        if self._size:
            with open(self.path, "rb") as f:
                f.seek(self._size - 1)
                if f.read(1) != b"\n":
                    self._held.append(b"\n")
                    with self._lock:
                        self._flush()

    def write(self, event: str, dut: str | None = None, **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"time": utc_now_iso(), "mono": round(time.monotonic(), 3), "event": event, "dut": dut}
        rec.update(fields)
        data = (json.dumps(rec, default=str, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"journal {self.path} is closed")
            if len(self._held) >= MAX_HELD:
                self._held.popleft()
                self.dropped += 1
            self._held.append(data)
            self._flush()
        return rec

    @property
    def held(self) -> int:
        return len(self._held)

    def _flush(self) -> bool:
        """Write the held records in order (the lock is held); False when the disk still refuses them."""
        while self._held:
            data = self._held[0]
            try:
                append(self._fd, data, self._size)
                os.fsync(self._fd)
            except OSError as exc:
                self.storage.failed(self.path, exc)
                self.storage.hold(self.flush)
                return False
            self._size += len(data)
            self._held.popleft()
        return True

    def flush(self) -> bool:
        with self._lock:
            return self._fd < 0 or self._flush()

    def close(self) -> int:
        """Close the journal; returns how many records could not be written (printed on stderr, not lost)."""
        with self._lock:
            if self._fd < 0:
                return 0
            self._flush()
            lost = [d for d in self._held if d.strip()]
            if lost or self.dropped:
                print(
                    f"diehard serve: journal {self.path}: {len(lost)} records could not be written (the disk still "
                    f"refuses them{f'; {self.dropped} older ones were dropped' if self.dropped else ''}); here they "
                    "are, append them to the journal when there is space:",
                    file=sys.stderr,
                )
                for d in lost:
                    sys.stderr.write(d.decode())
                sys.stderr.flush()
            os.close(self._fd)
            self._fd = -1
            return len(lost) + self.dropped


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a journal (an empty list when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the journal ({exc.strerror or exc})") from exc
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            # A record cut by a crash is JSON that stops early: the parser runs out of text. A later server
            # ended the line, so it may be anywhere in the file; a damaged line fails before its end.
            if text.startswith("{") and (exc.pos >= len(text) or exc.msg.startswith("Unterminated string")):
                continue
            raise DataError(f"{path}:{lineno}: not a JSON journal line ({exc}); fix or move the line away") from exc
        if isinstance(rec, dict):
            out.append(rec)
    return out


def last_snapshots(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last ``snap`` of every DUT in the journal: what a restarted server resumes from."""
    snaps: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.get("dut") and isinstance(rec.get("snap"), dict):
            snaps[rec["dut"]] = rec["snap"]
    return snaps
