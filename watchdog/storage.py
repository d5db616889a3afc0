"""What the server does when a write fails (a full disk, mostly): supervision goes on, degraded, and says so once.

Every file the server writes while it runs (the journal, the server copies, the status file, the replay floors)
goes through :func:`append` or reports its failures to one :class:`Storage`. The first failure of an episode
prints one line on stderr (the operator's terminal or the service log: the journal cannot take it); the writers
then degrade: the journal keeps its records in memory, server copies skip the benchmark's lines and keep only
their own markers, the status file is not rewritten. The server calls :meth:`Storage.retry` every status
interval: held work is written as soon as space returns, and the end of the episode is reported once too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path


def append(fd: int, data: bytes, size: int | None = None) -> None:
    """Append ``data`` to the file open at ``fd`` (O_APPEND) whose length is ``size`` (None: ask the file, for a
    file that others append to as well), all or nothing: a write that fails half-way (ENOSPC after a partial
    write) is cut back, so no torn line stays behind."""
    if size is None:
        size = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)  # frees space: works on a full disk
        raise


class Storage:
    """The server's record of failed writes: one report per episode, and retries of what was held back."""

    def __init__(self, report: Callable[[str], None] | None = None):
        self.report = report or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.since: float | None = None  # wall time of the episode's first failure
        self.first: str = ""
        self.failures = 0
        self._held: list[Callable[[], bool]] = []
        self._fresh = False  # a failure since the last retry: the episode goes on even with nothing held
        self._give_up: dict[Callable[[], bool], Callable[[], None]] = {}

    @property
    def degraded(self) -> bool:
        return self.since is not None

    def failed(self, path: str | Path, exc: OSError) -> None:
        """A write to ``path`` failed; the caller degrades. Only the first failure of an episode is reported."""
        self.failures += 1
        self._fresh = True
        if self.since is not None:
            return
        self.since = time.time()
        self.first = f"{path}: {exc.strerror or exc}"
        self.report(
            f"diehard serve: cannot write {path} ({exc.strerror or exc}); supervision goes on: the journal is kept "
            "in memory and server copies skip the benchmarks' lines until the write works again (free space there)"
        )

    def hold(self, job: Callable[[], bool], give_up: Callable[[], None] | None = None) -> None:
        """Work to finish when writes work again: ``job()`` returns True once it is done; ``give_up()`` is called
        when the server stops before that."""
        if job not in self._held:
            self._held.append(job)
            if give_up is not None:
                self._give_up[job] = give_up

    def give_up(self) -> int:
        """The server stops with work still held: let each writer end as well as it can. Returns how many."""
        left, self._held = self._held, []
        for job in left:
            if job in self._give_up:
                self._give_up.pop(job)()
        return len(left)

    def retry(self) -> dict | None:
        """Run the held work. When nothing is left of an episode, report its end once and return what it was
        (for the journal: ``since``, ``first`` error, ``failures``); None otherwise."""
        self._held = [job for job in self._held if not job()]
        self._give_up = {job: f for job, f in self._give_up.items() if job in self._held}
        fresh, self._fresh = self._fresh, False
        if self._held or fresh or self.since is None:
            return None
        ended = {"since": self.since, "first": self.first, "failures": self.failures}
        self.report(
            f"diehard serve: writes work again after {time.time() - self.since:.0f} s ({self.failures} failed "
            "writes); what was held in memory is written"
        )
        self.since = None
        self.failures = 0
        return ended

    @property
    def pending(self) -> int:
        return len(self._held)
