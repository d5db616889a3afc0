"""The screenshots of the demo campaign's dashboard in docs/ (a tool, not a test).

Runs ``diehard demo`` as a user does, with the dashboard on a fixed port; once the demo prints the dashboard's
address it opens the page in Debian's headless Chromium, waits until the watchdog has acted and the analysis
has numbers with events, and saves the page.

Run from the repository root (about 6 minutes on 2 cores; --quick: about 2):
    SE_OFFLINE=true PYTHONPATH=. python tests/e2e/dashboard_screenshots.py [--quick] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.watchdog.dashboard_kit import CHROME_ARGS, CHROMEDRIVER, CHROMIUM  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--after", type=float, default=60.0, help="seconds of serving before the shot, at least")
    a = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="dashboard-shots-"))
    cmd = [sys.executable, "-m", "diehardlab", "demo", "--out", str(work / "demo"), "--dashboard", f"127.0.0.1:{port}"]
    demo = subprocess.Popen([*cmd, *(["--quick"] if a.quick else [])], stdout=subprocess.PIPE, text=True)
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver = None
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            print(line, end="", flush=True)
            if "dashboard: http" in line:
                break
        else:
            raise SystemExit("the demo ended without serving its dashboard")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in [*CHROME_ARGS, f"--user-data-dir={work / 'profile'}", "--window-size=1500,1700"]:
            opts.add_argument(arg)
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        driver.get(f"http://127.0.0.1:{port}/")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 600:
            events = [int(e.text or 0) for e in driver.find_elements("css selector", "#groups .g-events")]
            acted = "power-cycle" in driver.find_element("id", "journal").text
            if time.monotonic() - t0 >= (20 if a.quick else a.after) and acted and sum(events) > 0:
                break
            time.sleep(1)
        a.out.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1500, min(2600, height + 40))
        time.sleep(1.0)
        driver.save_screenshot(str(a.out / "dashboard-demo.png"))
        print(f"wrote {a.out / 'dashboard-demo.png'}")
        for line in demo.stdout:
            print(line, end="", flush=True)
        demo.wait(timeout=900)
    finally:
        if driver is not None:
            driver.quit()
        if demo.poll() is None:
            demo.terminate()
            demo.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
