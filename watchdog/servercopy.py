"""The server's copy of a DUT log, rebuilt from its datagrams, with radiation-setup's server markers.

Named like the DUT's own file (from its ``#LOGFILE`` datagram; libLogHelper-style name otherwise), it holds
``#SERVER_HEADER <json>``, ``#SERVER_BEGIN ...``, every line received, and one closing line: ``#SERVER_END``
when the run ended normally, or ``#INF DUE cause:<cause> action:<action>`` followed by ``#SERVER_DUE:<what
the server did>`` when the server had to act. Every line carries the ISO receive-time prefix
(``YYYY-MM-DD HH:MM:SS.mmm``) that the parser understands, so the copy keeps when each line arrived.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diehardlab.formats import grammar

# What the server did -> radiation-setup's closing marker.
ACTION_MARKERS = {
    "app-restart": grammar.SERVER_DUE_APP,
    "os-reboot": grammar.SERVER_DUE_OS,
    "power-cycle": grammar.SERVER_DUE_POWER,
    "cool-down": grammar.SERVER_DUE_POWER,
    "broken": grammar.SERVER_UNKNOWN,
}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ServerCopy:
    def __init__(self, log_dir: Path, name: str, header: dict[str, Any]):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / Path(name).name
        self.lines = 0
        self.closed = False
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._write("#SERVER_HEADER " + json.dumps(header, sort_keys=True, separators=(",", ":")) + "\n")
        self._write(grammar.server_begin_line(_now()))

    def rename(self, name: str, dut_path: str | None = None) -> None:
        """Take the DUT's log name before any line arrived (kept as it is when that name is already taken)."""
        target = self.path.with_name(Path(name).name)
        if target == self.path or target.exists():
            return
        os.rename(self.path, target)
        self.path = target
        if dut_path:
            self._write(f"#INF SERVER dut_log:{dut_path}")

    def _write(self, text: str) -> None:
        if not text.endswith("\n"):
            text += "\n"
        os.write(self._fd, (grammar.iso_prefix(_now()) + text).encode("ascii", "replace"))

    def line(self, text: str) -> None:
        if self.closed:
            return
        self._write(text)
        self.lines += 1

    def close(self, action: str | None = None, cause: str | None = None) -> None:
        """``action`` None: a normal end (``#SERVER_END``); else the recovery the server started."""
        if self.closed:
            return
        when = grammar.server_time(_now())
        if action is None:
            self._write(f"{grammar.SERVER_END} {when}")
        else:
            self._write(f"#INF DUE cause:{cause or 'unknown'} action:{action}")
            self._write(f"{ACTION_MARKERS.get(action, grammar.SERVER_UNKNOWN)} {when}")
        os.fsync(self._fd)
        os.close(self._fd)
        self.closed = True

    def sync(self) -> None:
        if not self.closed:
            os.fsync(self._fd)
