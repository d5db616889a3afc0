"""A tiny benchmark for the watchdog tests: writes a libLogHelper log with the foundation's writer and streams
it with the foundation's datagram sender. It really crashes (os.abort) or hangs (stops iterating, ignores
SIGTERM) when asked; the tests also kill -9 or SIGSTOP it from outside."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from diehardlab.formats.datagram import DatagramSender
from diehardlab.formats.writer import LogWriter


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--dut", default="")
    p.add_argument("--key-file", default="")
    p.add_argument("--log-dir", required=True)
    p.add_argument("--bench", default="app")
    p.add_argument("--hostname", default="dut")
    p.add_argument("--period", type=float, default=0.05)
    p.add_argument("--crash-after", type=int, default=-1)
    p.add_argument("--hang-after", type=int, default=-1)
    p.add_argument("--sdc-at", type=int, default=-1)
    p.add_argument("--iterations", type=int, default=-1)
    p.add_argument("--startup-s", type=float, default=0.0, help="silence before the first line (model loading)")
    a = p.parse_args()
    time.sleep(a.startup_s)
    host, _, port = a.server.rpartition(":")
    key = None
    if a.key_file:
        with open(a.key_file) as f:
            key = bytes.fromhex(f.read().strip())
    sender = DatagramSender(host, int(port), ecc=False, dut=a.dut or None, key=key)
    w = LogWriter(a.log_dir, a.bench, f"test app {a.bench}", ecc=False, hostname=a.hostname, interval=1, sinks=[sender])

    def on_term(signum, frame):
        w.log_stop("SIGTERM")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    i = 0
    while a.iterations < 0 or i < a.iterations:
        if i == a.crash_after:
            os.abort()
        if i == a.hang_after:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(1)
        w.start_iteration()
        time.sleep(a.period)
        w.end_iteration()
        if i == a.sdc_at:
            w.log_error_detail("batch:0 img:1 i:2 g:1.000000e+00 o:2.000000e+00")
            w.log_error_count(1)
        i += 1
    w.end_log_file()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
