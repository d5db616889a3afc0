"""A libLogHelper v2 compatible log writer.

It mirrors ``log_helper.cpp`` call for call, so the bytes match what C/C++ benchmarks write:
``start_iteration()`` / ``end_iteration()`` around the kernel, then ``log_error_detail()`` for each wrong
element and ``log_error_count(n)``, which writes the ``#SDC`` line and applies the two abort rules.
As in libLogHelper, ``end_iteration()`` increments the iteration counter, so an ``#SDC`` after it carries
the next iteration's number; old parsers expect exactly that.

Differences, all additive: times are UTC (file name and ``#BEGIN``) and an ``#INF`` line says so; every
line goes to the file in one ``write`` call on an ``O_APPEND`` descriptor (a SIGKILL loses at most the
line being written), and it is fsynced at every ``#SDC``/``#ABORT``/``#END`` and, by a background thread,
at most ``fsync_interval`` seconds after any other line (a power cycle loses at most those seconds).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from diehardlab.errors import DiehardError
from diehardlab.formats import grammar
from diehardlab.formats.filename import format_log_name

Sink = Callable[[str], None]


class BenchmarkAborted(DiehardError):
    """libLogHelper's abort rules fired; ``#ABORT`` and ``#END`` are already in the log."""

    def __init__(self, reason: str, path: Path):
        super().__init__(f"#ABORT {reason} (log: {path})")
        self.reason = reason
        self.path = path


def _ascii(text: str) -> str:
    # The legacy server decodes datagrams as ASCII and dies on anything else: never send it other bytes.
    return text.encode("ascii", "replace").decode("ascii").replace("\n", " ")


class LogWriter:
    """Writes one benchmark run's log. Use as a context manager, or call :meth:`end_log_file`."""

    def __init__(
        self,
        log_dir: str | Path,
        benchmark: str,
        header: str,
        *,
        ecc: bool,
        hostname: str | None = None,
        interval: int = 10,
        max_errors_per_iter: int = 500,
        max_infos_per_iter: int = 500,
        double_error_kill: bool = True,
        sinks: Iterable[Sink] = (),
        fsync_interval: float = 2.0,
        now: Callable[[], datetime] | None = None,
        version: str | None = None,
    ):
        if interval < 1 or max_errors_per_iter < 1 or max_infos_per_iter < 1:
            raise ValueError("interval and the per-iteration caps must be >= 1")
        self._now = now or (lambda: datetime.now(timezone.utc).replace(tzinfo=None))
        started = self._now()
        self.hostname = hostname or socket.gethostname()
        self.ecc = ecc
        self.interval = interval
        self.max_errors_per_iter = max_errors_per_iter
        self.max_infos_per_iter = max_infos_per_iter
        self.double_error_kill = double_error_kill
        self.sinks = list(sinks)
        self.sink_failures = 0

        self.iteration = 0
        self.kernel_time = 0.0
        self.acc_time = 0.0
        self.total_errors = 0
        self._last_iter_errors = 0
        self._last_iter_with_errors = 0
        self._err_details = 0
        self._inf_details = 0
        self._it_start = 0.0
        self.ended = False

        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / format_log_name(started, benchmark, ecc, self.hostname)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, args=(fsync_interval,), name="log-fsync", daemon=True)
        self._syncer.start()

        if version is None:
            from diehardlab import __version__ as version
        # As libLogHelper's LocalAndUDPFile: tell the server which DUT file this stream mirrors, so its
        # copy gets the same name and the file can be pulled afterwards. Sent, not written.
        self._to_sinks(f"#LOGFILE {self.path}\n")
        self._write("#HEADER " + _ascii(header) + "\n")
        self._write(grammar.begin_line(started))
        self._write(f"#INF diehardlab version:{version} clock:UTC\n", sync=True)

    # -- the libLogHelper API -------------------------------------------------------------------------

    def start_iteration(self) -> None:
        self._err_details = 0
        self._inf_details = 0
        self._it_start = time.perf_counter()

    def end_iteration(self, kernel_time: float | None = None) -> None:
        """Close an iteration. ``kernel_time`` overrides the wall time since :meth:`start_iteration`."""
        if kernel_time is None:
            kernel_time = time.perf_counter() - self._it_start
        self.kernel_time = kernel_time
        self.acc_time += kernel_time
        self._err_details = 0
        self._inf_details = 0
        if self.iteration % self.interval == 0:
            self._write(grammar.it_line(self.iteration, self.kernel_time, self.acc_time))
        self.iteration += 1

    def log_error_detail(self, detail: str) -> None:
        # libLogHelper keeps max+1 details per iteration (its test is `counter <= max`).
        if self._err_details <= self.max_errors_per_iter:
            self._write("#ERR " + _ascii(detail) + "\n")
        self._err_details += 1

    def log_info_detail(self, detail: str) -> None:
        if self._inf_details <= self.max_infos_per_iter:
            self._write("#INF " + _ascii(detail) + "\n")
        self._inf_details += 1

    def log_info_count(self, count: int) -> None:
        if count > 0:
            self._write(grammar.inf_count_line(self.iteration, self.kernel_time, self.acc_time, count))

    def log_error_count(self, kernel_errors: int) -> None:
        """Write ``#SDC`` for a faulty iteration; raise :class:`BenchmarkAborted` when a rule fires."""
        if kernel_errors <= 0:
            return
        self.total_errors += kernel_errors
        self._write(
            grammar.sdc_line(self.iteration, self.kernel_time, self.acc_time, kernel_errors, self.total_errors),
            sync=True,
        )
        if (
            self.double_error_kill
            and kernel_errors == self._last_iter_errors
            and self._last_iter_with_errors + 1 == self.iteration
        ):
            self._abort(grammar.ABORT_EQUAL)
        if kernel_errors > self.max_errors_per_iter:
            self._abort(grammar.ABORT_TOO_MANY)
        self._last_iter_errors = kernel_errors
        self._last_iter_with_errors = self.iteration

    def end_log_file(self) -> None:
        if self.ended:
            return
        self._write("#END\n", sync=True)
        self.ended = True
        self.close()

    # -- diehardnet classification details ---------------------------------------------------------------

    def log_critical(self, batch: int, img: int, i: int, golden: int, output: int, ground_truth: int) -> None:
        self.log_error_detail(grammar.critical_detail(batch, img, i, golden, output, ground_truth))

    def log_element(self, batch: int, img: int, i: int, golden: float, output: float) -> None:
        self.log_error_detail(grammar.element_detail(batch, img, i, golden, output))

    def log_stop(self, reason: str) -> None:
        """A clean stop asked from outside (SIGTERM): say why, then ``#END``."""
        self._write("#INF STOP reason:" + _ascii(reason) + "\n")
        self.end_log_file()

    # -- plumbing -----------------------------------------------------------------------------------------

    def _abort(self, reason: str) -> None:
        self._write(f"#ABORT {reason}\n", sync=True)
        self.end_log_file()
        raise BenchmarkAborted(reason, self.path)

    def _write(self, line: str, sync: bool = False) -> None:
        data = line.encode("ascii", "replace")
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"log {self.path} is closed")
            os.write(self._fd, data)
            if sync:
                os.fsync(self._fd)
                self._dirty = False
            else:
                self._dirty = True
        self._to_sinks(line)

    def _to_sinks(self, line: str) -> None:
        for sink in self.sinks:
            try:
                sink(line)
            except OSError:
                # The local file is the record; a lost datagram is what the server's pull covers.
                self.sink_failures += 1

    def _sync_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._lock:
                if self._dirty and self._fd >= 0:
                    os.fsync(self._fd)
                    self._dirty = False

    def close(self) -> None:
        """Release the file without writing ``#END`` (a crash-like stop); idempotent."""
        self._stop.set()
        with self._lock:
            if self._fd >= 0:
                if self._dirty:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or exc_type is BenchmarkAborted:
            self.end_log_file()
        else:
            self.close()
