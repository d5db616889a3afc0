"""Benchmark: does the live dashboard slow the watchdog? 50 DUTs streaming, 10 open pages, dashboard on vs off.

The real server (``diehard serve``, local transport) supervises 50 DUTs that stream signed datagrams (20 lines/s
each, as in bench_watchdog_server.py). One of them runs a real benchmark (tests/watchdog/dut_app.py) that the
script SIGSTOPs again and again: the watchdog must detect the silence (liveness timeout 1 s) and restart it.
Each repeat runs the same stream twice, alternating, in the same invocation:

- off: ``diehard serve FILE``;
- on:  ``diehard serve FILE --dashboard 127.0.0.1:PORT`` with 10 open pages: each loads the page and its two
  static files, then keeps the event stream open and parses every event as the page does (a separate process
  reads them, so its CPU is not the server's). ``--browser`` opens 10 tabs of a real headless Chromium instead.

Printed per configuration (medians over repeats): the server process's CPU share of one core while it streams,
the analysis worker's CPU share (a separate, niced process; on only), the watchdog's detection latency beyond
the liveness timeout (silence -> hang-detected, from the journal's monotonic clock: median and p99 over all
trials), silence -> new benchmark start, and, with the dashboard, how long after the watchdog's decision the
pages got it (the journal's hang-detected time -> the page process's receive time, same machine clock).

Run: MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
     PYTHONPATH=. python tests/bench/bench_watchdog_dashboard.py [--duts 50] [--pages 10] [--trials 12] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_watchdog_server import (  # noqa: E402
    b00_events,
    b00_run,
    campaign,
    cpu_s,
    feed,
    free_port,
    p99,
    silence_b00,
    wait_keys,
)

# The pages: each fetches what a browser fetches, then reads its event stream and parses every event.
PAGES = r"""
import json, selectors, socket, sys, time
port, n, out, seconds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def fetch(path):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()
sel = selectors.DefaultSelector()
bufs = {}
for i in range(n):
    for path in ("/", "/static/dashboard.js", "/static/dashboard.css"):
        fetch(path)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
    bufs[i] = b""
print("ready", flush=True)
events = [0] * n
log = open(out, "w")
end = time.monotonic() + seconds
while time.monotonic() < end:
    for key, _ in sel.select(timeout=0.5):
        i = key.data
        try:
            chunk = key.fileobj.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            sel.unregister(key.fileobj)
            continue
        bufs[i] += chunk
        while b"\n\n" in bufs[i]:
            block, bufs[i] = bufs[i].split(b"\n\n", 1)
            lines = block.decode("utf-8", "replace").split("\n")
            kind = next((x[7:] for x in lines if x.startswith("event: ")), "")
            data = "".join(x[6:] for x in lines if x.startswith("data: "))
            if not kind:
                continue
            doc = json.loads(data)
            events[i] += 1
            if kind == "journal" and i == 0:
                for e in doc["entries"]:
                    if e["dut"] == "b00" and e["event"] == "hang-detected":
                        log.write(json.dumps({"t": time.time(), "time": e["time"]}) + "\n")
                        log.flush()
print(json.dumps({"events": events}), flush=True)
"""


def start(path: Path, seconds: float, dashboard: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "diehardlab.watchdog", "serve", str(path), "--duration", str(seconds)]
    if dashboard:
        cmd += ["--dashboard", dashboard]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def children(pid: int, needle: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and needle in cmd:
            out.append(int(entry))
    return out


def browser_pages(url: str, n: int):
    from tests.watchdog.dashboard_kit import CHROME_ARGS, CHROMEDRIVER, CHROMIUM

    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in [*CHROME_ARGS, f"--user-data-dir={tempfile.mkdtemp(prefix='bench-chromium-')}"]:
        opts.add_argument(a)
    d = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    d.get(url)
    for _ in range(n - 1):
        d.switch_to.new_window("tab")
        d.get(url)
    return d


def one(n: int, rate: float, trials: int, liveness: float, dashboard: bool, pages: int, browser: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        http = free_port()
        srv = start(campaign(tmp, n, port, liveness), 3600, f"127.0.0.1:{http}" if dashboard else None)
        keys = wait_keys(tmp, n, first=1)
        journal = tmp / "journal.jsonl"
        readers = None
        page_log = tmp / "pages.jsonl"
        drv = None
        feeder, stop = feed(port, keys, rate)
        time.sleep(2.0)
        if dashboard:
            if browser:
                drv = browser_pages(f"http://127.0.0.1:{http}/", pages)
            else:
                readers = subprocess.Popen([sys.executable, "-c", PAGES, str(http), str(pages), str(page_log), "3600"],
                                           stdout=subprocess.PIPE, text=True)  # fmt: skip
                assert readers.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        worker = children(srv.pid, "diehardlab.analysis.live") if dashboard else []
        if dashboard and not worker:
            print("  (the analysis worker is not running yet; its CPU is counted from its start)", flush=True)
        c0, w0, t0 = cpu_s(srv.pid), sum(cpu_s(p) for p in worker), time.monotonic()
        lat = []
        try:
            for _ in range(trials):
                mine = b00_run(journal)
                time.sleep(0.8)
                silent_at, mine = silence_b00(journal, mine, liveness)
                hang = b00_events(journal, "hang-detected")[-1]
                lat.append({"detect": hang["mono"] - silent_at - liveness, "restart": mine[-1]["mono"] - silent_at,
                            "hang_time": hang["time"]})  # fmt: skip
            wall = time.monotonic() - t0
            worker = children(srv.pid, "diehardlab.analysis.live") if dashboard else []
            server_cpu = cpu_s(srv.pid) - c0
            worker_cpu = sum(cpu_s(p) for p in worker) - w0 if worker else 0.0
        finally:
            stop.set()
            feeder.join(timeout=5)
            if readers is not None:
                readers.terminate()
                readers.wait(timeout=10)
            if drv is not None:
                drv.quit()
            srv.send_signal(signal.SIGINT)
            srv.wait(timeout=120)
        seen = []
        if dashboard and page_log.exists():
            got = {c["time"]: c["t"] for c in map(json.loads, page_log.read_text().splitlines())}
            for x in lat:
                if x["hang_time"] in got:
                    acted = datetime.fromisoformat(x["hang_time"].replace("Z", "+00:00")).timestamp()
                    seen.append(got[x["hang_time"]] - acted)
        return {
            "server_cpu_share": server_cpu / wall,
            "worker_cpu_share": worker_cpu / wall,
            "detect": [x["detect"] for x in lat],
            "restart": [x["restart"] for x in lat],
            "page_seen": seen,
        }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--duts", type=int, default=50)
    p.add_argument("--pages", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="lines per second per DUT")
    p.add_argument("--trials", type=int, default=12, help="hangs per configuration per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--liveness", type=float, default=1.0)
    p.add_argument("--browser", action="store_true", help="10 tabs of a real headless Chromium as the pages")
    a = p.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(a.repeats):
        for mode in ("off", "on"):
            runs[mode].append(one(a.duts, a.rate, a.trials, a.liveness, mode == "on", a.pages, a.browser))
    pages = f"{a.pages} {'Chromium tabs' if a.browser else 'page streams'}"
    print(f"dashboard bench: {a.duts} DUTs x {a.rate:g} lines/s (signed), liveness {a.liveness:g} s, poll 0.2 s; "
          f"{a.repeats} repeats x {a.trials} hangs per configuration, alternating off/on; on = {pages}")  # fmt: skip
    for mode in ("off", "on"):
        rs = runs[mode]
        detect = [x for r in rs for x in r["detect"]]
        restart = [x for r in rs for x in r["restart"]]
        cpu = statistics.median(r["server_cpu_share"] for r in rs)
        line = (f"dashboard {mode:>3}: server CPU {cpu:6.1%} of one core; detection beyond timeout median "
                f"{statistics.median(detect):.3f} s, p99 {p99(detect):.3f} s; silence -> new start median "
                f"{statistics.median(restart):.3f} s, p99 {p99(restart):.3f} s (n={len(detect)})")  # fmt: skip
        if mode == "on":
            seen = [x for r in rs for x in r["page_seen"]]
            line += f"; analysis worker CPU {statistics.median(r['worker_cpu_share'] for r in rs):.1%}"
            if seen:
                line += f"; pages got the hang median {statistics.median(seen):.3f} s, p99 {p99(seen):.3f} s after it"
        print(line)
    off = statistics.median(r["server_cpu_share"] for r in runs["off"])
    on = statistics.median(r["server_cpu_share"] for r in runs["on"])
    d_off = p99([x for r in runs["off"] for x in r["detect"]])
    d_on = p99([x for r in runs["on"] for x in r["detect"]])
    print(f"ratio on/off: server CPU {on / max(off, 1e-9):.2f}x, detection p99 {d_on / max(d_off, 1e-9):.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
