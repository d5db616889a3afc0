"""One server per campaign: an exclusive lock on ``<journal>.lock``, held for the server's whole life.

``flock`` locks go with the process: a server killed with SIGKILL (or a machine that lost power) holds nothing
any more, so a restart never has to clean up, and ``diehard status`` can tell a running server from a stopped
one without trusting a PID. The file says who holds it (PID, host, UDP address, start time) so that a second
server can name the first in its one-line refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from diehardlab.errors import ConfigError


def lock_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


class CampaignLock:
    def __init__(self, journal: Path):
        self.path = lock_path(journal)
        self._fd = -1

    def acquire(self, campaign: str, info: dict[str, Any]) -> None:
        """Take the lock or raise ConfigError naming the server that holds it. Nothing else is touched."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot create the campaign's lock file ({exc.strerror or exc})") from exc
        for attempt in range(5):  # a 'diehard status' may hold a shared lock for an instant: try again briefly
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 4:
                    os.close(fd)
                    raise ConfigError(
                        f"campaign {campaign!r} is already served by {describe(holder(self.path))}: stop that server "
                        f"first (SIGINT), or watch it with 'diehard status' (lock {self.path})"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        doc = {"pid": os.getpid(), "host": socket.gethostname(), **info}
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, only the note is missing
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(doc) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


def holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock at ``path`` (its note), or None when no server holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                doc = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                doc = {}
            return doc if isinstance(doc, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(doc: dict[str, Any] | None) -> str:
    doc = doc or {}
    pid = doc.get("pid", "?")
    where = f" on {doc['host']}" if doc.get("host") else ""
    udp = f", udp {doc['udp']}" if doc.get("udp") else ""
    since = f", since {doc['started']}" if doc.get("started") else ""
    return f"the server with pid {pid}{where}{udp}{since}"
