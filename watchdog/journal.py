"""The campaign journal: one JSON object per line, appended and fsynced at every state change.

Each line has ``time`` (UTC ISO 8601), ``mono`` (the server's monotonic clock, seconds), ``event`` and ``dut``
(None for server-wide events). Supervisor events also carry ``snap``: the DUT's counters, benchmark and
rotation position at that moment, so a restarted server resumes from the last snapshot of each DUT.
A line torn by a crash of the server (the last one, without its newline) is ignored when reading.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diehardlab.errors import DataError


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    """Append-only JSON-lines journal. ``write`` returns after the line is on disk (fsync)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        # A previous server killed mid-write leaves a line without its newline: end it, so ours start clean.
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def write(self, event: str, dut: str | None = None, **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"time": utc_now_iso(), "mono": round(time.monotonic(), 3), "event": event, "dut": dut}
        rec.update(fields)
        data = (json.dumps(rec, default=str, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"journal {self.path} is closed")
            os.write(self._fd, data)
            os.fsync(self._fd)
        return rec

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a journal (an empty list when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if not line.rstrip().endswith("}"):
                continue  # a torn line: the server died while writing it (a later start ended the line)
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
