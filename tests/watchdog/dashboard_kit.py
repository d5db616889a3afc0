"""What the dashboard tests share: a live campaign with the dashboard, a facility log that grows, the browser.

The campaign has three local DUTs on a loopback server:

- ``quiet``: legacy datagrams matched by source address (127.0.0.1), its benchmark an idle process, so the only
  datagrams it gets are the ones a test sends; a long liveness timeout;
- ``silent``: signed datagrams, an idle benchmark that never sends, a short liveness timeout and a simulated
  switch with no app restarts allowed: the watchdog power-cycles it (power off ``POWER_OFF_S``), so its
  "recovering" state lasts long enough for a person, or a test, to see it;
- ``streamer``: the tests' real benchmark (tests/watchdog/dut_app.py) streaming signed datagrams, with an SDC.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.watchdog.conftest import ServerThread, app_argv, local_campaign

POWER_OFF_S = 3.0
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
# What the tests run the browser with: headless, and nothing that reaches the network or a profile.
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1500,1000"]  # fmt: skip


def _local_dut(name: str, bench: str, argv: str, settings: str) -> str:
    """One local DUT: its own ``settings`` (TOML lines), and ``argv`` (a TOML list) its one benchmark ``bench``."""
    lines = "".join(line.strip() + "\n" for line in settings.splitlines() if line.strip())
    return f'[[dut]]\nname = "{name}"\ntransport = "local"\n{lines}[[dut.benchmark]]\nname = "{bench}"\n' + (
        f"argv = {argv}\n\n"
    )


def live_campaign(tmp: Path, refresh_s: float = 1.0, stall_s: float = 3.0, max_clients: int = 32) -> Path:
    idle = "[" + ", ".join(f'"{a}"' for a in (sys.executable, "-c", "import time; time.sleep(100000)")) + "]"
    signed = """
        datagram = "extended"
        datagram_key = "generate"
        """
    quiet = """
        datagram = "legacy"
        source_ip = "127.0.0.1"
        liveness_timeout_s = 600
        stop_grace_s = 0
        local_boot_s = 0.1
        """
    silent = f"""
        switch = "sim"
        outlet = 1
        liveness_timeout_s = 1.5
        boot_timeout_s = 5
        stop_grace_s = 0
        local_boot_s = 0.2
        [dut.escalation]
        max_app_restarts = 0
        max_os_reboots = 0
        power_off_s = {POWER_OFF_S}
        max_power_cycles = 50
        """
    streamer = """
        liveness_timeout_s = 30
        stop_grace_s = 0.5
        local_boot_s = 0.1
        """
    body = _local_dut("quiet", "idle", idle, quiet) + _local_dut("silent", "idle", idle, signed + silent)
    body += _local_dut("streamer", "app", app_argv("--period", "0.2", "--sdc-at", "3"), signed + streamer)
    text = textwrap.dedent(f"""
        [[switch]]
        name = "sim"
        model = "simulated"
        outlets = 4

        {{body}}
        [facility]
        kind = "lansce"
        flux_factor = 1.0e4
        timezone = "UTC"
        flux_logs = ["facility-counts.txt"]

        [dashboard]
        target_relative_width = 0.2
        refresh_s = {refresh_s}
        facility_stall_s = {stall_s}
        max_clients = {max_clients}
        """).replace("{body}", body)
    return local_campaign(tmp, text, name="dash-test")


class FacilityWriter:
    """A LANSCE-format count log written as a facility writes it: a row every ``period_s`` until stopped."""

    def __init__(self, path: Path, period_s: float = 0.5, counts_per_s: float = 100.0):
        self.path = path
        self.period_s = period_s
        self.rate = counts_per_s
        self.t0 = time.time() - 5.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        # Rows from a few seconds before the campaign, so every run is covered from its start.
        for k in range(10):
            self.row(self.t0 + k * 0.5)

    def row(self, t: float) -> None:
        when = datetime.fromtimestamp(t, timezone.utc)
        count = int((t - self.t0) * self.rate)
        with open(self.path, "a") as f:
            f.write(f"{when:%Y-%m-%d %H:%M:%S},{when.microsecond // 1000:03d} {count}\n")

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.row(time.time())

    def start(self) -> FacilityWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        """The facility stops writing (the log stops growing)."""
        self._stop.set()
        self._thread.join(timeout=5)


class DashServer(ServerThread):
    """The campaign server in a thread with ``--dashboard 127.0.0.1:0``: ``url`` is where the page is."""

    def __init__(self, path: Path, duration: float | None = None):
        super().__init__(path, duration)
        from diehardlab.watchdog.server import Server

        self.server = Server(self.c, str(path), dashboard="127.0.0.1:0")

    def __enter__(self):
        super().__enter__()
        from tests.watchdog.conftest import wait_for

        wait_for(lambda: self.server.dashboard.url or self.error)
        self.url = self.server.dashboard.url
        return self


def send_legacy(port: int, line: str) -> None:
    from diehardlab.formats.datagram import encode_legacy

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(encode_legacy(line, False), ("127.0.0.1", port))
    s.close()


def browser_missing() -> str:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (the dev extra)"
    return ""


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every browser test (starting one costs seconds of CPU)."""
    why = browser_missing()
    if why:
        pytest.skip(why)
    os.environ["SE_OFFLINE"] = "true"  # selenium must not look for (or download) a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="diehard-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in [*CHROME_ARGS, f"--user-data-dir={profile}"]:
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
