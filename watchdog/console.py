"""Serial console capture: each line a DUT prints on its console, with a UTC timestamp, in a console log.

The port is opened with ``serial.serial_for_url``, so a local device (``/dev/ttyUSB0``), a console server
(``rfc2217://host:port``) and a raw TCP console (``socket://host:port``) all work. When the port drops (a
USB adapter unplugged, a console server restarted) the capture says so in the log and reopens it.
Runs in a daemon thread: reads block, and a console must never stall the watchdogs.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime, timezone
from pathlib import Path

import serial
from diehardlab.watchdog.journal import Journal


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class ConsoleCapture:
    def __init__(
        self, dut: str, url: str, baud: int, out_dir: Path, journal: Journal | None = None, retry_s: float = 2.0
    ):
        self.dut, self.url, self.baud = dut, url, baud
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / f"{dut}.console.log"
        self.journal = journal
        self.retry_s = retry_s
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"console-{dut}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def _note(self, out, text: str) -> None:
        out.write(f"{_stamp()} #CONSOLE {text}\n")
        out.flush()

    def _run(self) -> None:
        with open(self.path, "a", encoding="utf-8", errors="replace") as out:
            first = True
            while not self._stop.is_set():
                try:
                    port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0.5)
                except (serial.SerialException, OSError, ValueError) as exc:
                    self._note(out, f"cannot open {self.url}: {exc}")
                    self._stop.wait(self.retry_s)
                    continue
                if not first:
                    self.reconnects += 1
                first = False
                self._note(out, f"opened {self.url}")
                if self.journal is not None:
                    self.journal.write("console-open", self.dut, url=self.url)
                buf = b""
                try:
                    while not self._stop.is_set():
                        chunk = port.read(4096)
                        if not chunk:
                            continue
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        for raw in lines:
                            text = raw.decode("utf-8", "replace").rstrip("\r")
                            out.write(f"{_stamp()} {text}\n")
                        out.flush()
                except (serial.SerialException, OSError) as exc:
                    self._note(out, f"port dropped: {exc}")
                finally:
                    if buf:
                        out.write(f"{_stamp()} {buf.decode('utf-8', 'replace')}\n")
                        out.flush()
                    with contextlib.suppress(serial.SerialException, OSError):
                        port.close()
                self._stop.wait(self.retry_s)
