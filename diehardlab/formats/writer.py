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

A log must survive its machine's mistakes or say it did not. A write that fails part way (a full disk, a file
size limit) is cut back to the last whole line, so no torn ``#IT`` line is left, and :class:`LogWriteError` is
raised once; later lines still go to the sinks (the server's copy), never to the file again. A log file that
was unlinked while open (its folder removed) is noticed within ``check_interval`` seconds, and at every
``#SDC``/``#END``: it is written again at its path from the still-open descriptor, with an ``#INF`` line that
says so, or, when that cannot be done, reported as a :class:`LogWriteError`.
"""

from __future__ import annotations

import contextlib
import errno
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


class LogWriteError(DiehardError):
    """The log file cannot be written (full disk, removed and not re-creatable); it ends at a whole line."""

    def __init__(self, message: str, path: Path, errno_: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno = errno_


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
        check_interval: float = 1.0,
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
        # Readable too: if the file is unlinked while open, its content is copied back from this descriptor.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size  # bytes of whole lines: a failed write is cut back to it
        self._lock = threading.RLock()
        self._dirty = False
        self.failure: LogWriteError | None = None  # set once the file cannot be written; lines go to sinks only
        self._failure_raised = False
        self.notices: list[str] = []  # what happened to the file (restored...), for the caller to report
        self._check_interval = check_interval
        self._next_check = time.monotonic() + check_interval
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, args=(fsync_interval,), name="log-fsync", daemon=True)
        self._syncer.start()

        if version is None:
            from diehardlab import __version__ as version
        # As libLogHelper's LocalAndUDPFile: tell the server which DUT file this stream mirrors, so its
        # copy gets the same name and the file can be pulled afterwards. Sent, not written.
        self._to_sinks(f"#LOGFILE {self.path}\n")
        try:
            self._write("#HEADER " + _ascii(header) + "\n")
            self._write(grammar.begin_line(started))
            self._write(f"#INF diehardlab version:{version} clock:UTC\n", sync=True)
        except LogWriteError:
            self.close()
            raise

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
        try:
            self._write("#END\n", sync=True)
        finally:
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
        try:
            self._write(f"#ABORT {reason}\n", sync=True)
        finally:
            self.end_log_file()
        raise BenchmarkAborted(reason, self.path)

    def _write(self, line: str, sync: bool = False) -> None:
        data = line.encode("ascii", "replace")
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"log {self.path} is closed")
            if self.failure is None:
                try:
                    self._check_linked(force=sync)
                    if self.failure is None:
                        self._append(data)
                    if sync:
                        os.fsync(self._fd)
                        self._dirty = False
                    else:
                        self._dirty = True
                except OSError as exc:
                    self._fail(exc, "cannot write")
        self._to_sinks(line)
        self.raise_failure()

    def raise_failure(self) -> None:
        """Raise the :class:`LogWriteError` once, at the first line after the file stopped being writable."""
        if self.failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise self.failure

    def _append(self, data: bytes) -> None:
        """All of ``data`` or nothing: a short write (full disk, size limit) followed by an error is cut back."""
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError:
            if done:
                # If even this fails, the file ends in a partial line, which the parser reports as unparsed.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
            raise
        self._size += done

    def _fail(self, exc: OSError, what: str) -> None:
        reason = exc.strerror or type(exc).__name__
        self.failure = LogWriteError(
            f"log {self.path}: {what} ({reason}) at iteration {self.iteration}; the file keeps every whole line "
            "before it" + (", the lines after it went to the server only" if self.sinks else ""),
            self.path,
            exc.errno,
        )

    def _check_linked(self, force: bool = False) -> None:
        """Re-create the file at its path when it was unlinked (its folder removed), from the open descriptor."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + self._check_interval
        if os.fstat(self._fd).st_nlink > 0:
            return
        try:
            fd = restore_unlinked(self._fd, self.path)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                exc = OSError(exc.errno, "removed during the run, and another file now has its name")
            self._fail(exc, "was removed during the run and cannot be written again")
            return
        os.close(self._fd)
        self._fd = fd
        note = (
            f"log file was removed during the run; written again at its path from the open file at Ite:{self.iteration}"
        )
        self.notices.append(f"{note} ({self.path})")
        line = f"#INF {note}\n"
        self._append(line.encode("ascii", "replace"))
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
                if self._dirty and self._fd >= 0 and self.failure is None:
                    try:
                        os.fsync(self._fd)
                        self._dirty = False
                    except OSError as exc:  # reported by the next line written (no thread traceback)
                        self._fail(exc, "cannot be synced to disk")

    def close(self) -> None:
        """Release the file without writing ``#END`` (a crash-like stop); idempotent."""
        self._stop.set()
        with self._lock:
            if self._fd >= 0:
                if self._dirty and self.failure is None:
                    try:
                        os.fsync(self._fd)
                    except OSError as exc:
                        self._fail(exc, "cannot be synced to disk")
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or exc_type is BenchmarkAborted:
            self.end_log_file()
        else:
            self.close()


def restore_unlinked(fd: int, path: Path) -> int:
    """Write the content of the unlinked file open at ``fd`` to a new file at ``path`` (its folder re-created).

    Returns the new descriptor (read-write, append), fsynced; never replaces a file that has the name now.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    new = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            chunk = os.pread(fd, min(1 << 20, size - offset), offset)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(new, view) :]
            offset += len(chunk)
        os.fsync(new)
    except OSError:
        os.close(new)
        path.unlink(missing_ok=True)
        raise
    return new
