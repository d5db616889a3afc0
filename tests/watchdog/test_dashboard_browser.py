"""The dashboard as a person uses it: a real headless Chromium (Debian's, driven by selenium through
/usr/bin/chromedriver, offline) against a real campaign server with three local DUTs (dashboard_kit.py).

One browser for the whole session and one live server for this module keep the cost down; the tests run in
file order (the facility log stops growing in the last live one).
"""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from diehardlab.analysis import planning

from tests.conftest import BEAM_LOGS, FACILITY, ROOT, run_diehard
from tests.watchdog.conftest import events, free_port
from tests.watchdog.dashboard_kit import POWER_OFF_S, DashServer, FacilityWriter, browser, live_campaign, send_legacy

__all__ = ["browser"]  # the session's one browser (a fixture)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    path = live_campaign(tmp, refresh_s=1.0, stall_s=3.0, max_clients=32)
    writer = FacilityWriter(tmp / "facility-counts.txt").start()
    with DashServer(path) as srv:
        srv.facility = writer
        yield srv
    writer.stop()


def wait(driver, what, timeout: float = 10.0, step: float = 0.05):
    """``what(driver)`` until it is truthy (and return it), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = what(driver)
        except Exception as exc:  # the element is being replaced by the page: look again
            last = exc
        else:
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s (last: {last!r})")


def cell(driver, dut: str, cls: str):
    return driver.find_element("css selector", f'#duts tr[data-dut="{dut}"] .c-{cls}')


def state(driver, dut: str) -> str:
    return driver.find_element("css selector", f'#duts tr[data-dut="{dut}"]').get_attribute("data-state") or ""


def warnings(driver) -> str:
    return driver.find_element("id", "warnings").text


def test_the_page_shows_every_dut_and_follows_datagrams_without_reloading(browser, live):
    browser.get(live.url)
    rows = wait(browser, lambda d: [r for r in d.find_elements("css selector", "#duts tbody tr")
                                    if r.get_attribute("data-state")])  # fmt: skip
    assert [r.get_attribute("data-dut") for r in rows] == ["quiet", "silent", "streamer"]
    assert wait(browser, lambda d: d.find_element("id", "conn").text == "connected")
    assert browser.find_element("id", "campaign").text == "dash-test"
    browser.execute_script("window.sameDocument = true")  # gone if the page reloads
    took = []
    for k in range(3):
        n = 1000 + k
        sent = time.monotonic()
        send_legacy(live.c.server.udp_port, f"#IT Ite:{n} KerTime:0.0100000 AccTime:{n * 0.01:.7f}")
        wait(browser, lambda d, n=n: cell(d, "quiet", "rate").get_attribute("title") == f"iteration {n}", timeout=2.0)
        took.append(time.monotonic() - sent)
        assert float(cell(browser, "quiet", "age").get_attribute("data-age")) < 2.0
        time.sleep(0.3)
    assert max(took) < 2.0, took
    assert browser.execute_script("return window.sameDocument === true")
    # The streaming DUT: its SDC (dut_app --sdc-at 3) and a positive rate, from its own signed datagrams.
    wait(browser, lambda d: cell(d, "streamer", "sdc").text == "1")
    assert float(cell(browser, "streamer", "rate").text) > 0
    assert cell(browser, "silent", "age").text == "none since the server started"


def test_a_silent_dut_turns_recovering_when_the_watchdog_acts(browser, live):
    wait(browser, lambda d: state(d, "silent") == "running", timeout=POWER_OFF_S + 10)
    wait(browser, lambda d: state(d, "silent") == "recovering", timeout=10)
    seen = time.time()
    hang = events(live.c.server.journal, "hang-detected", "silent")[-1]
    acted = datetime.fromisoformat(hang["time"].replace("Z", "+00:00")).timestamp()
    assert seen - acted < 2.0, (seen, hang)  # the page changed within 2 s of the watchdog's decision
    assert cell(browser, "silent", "state").text == "recovering"
    step = wait(
        browser, lambda d: cell(d, "silent", "step").text.startswith("power cycle") and cell(d, "silent", "step")
    )
    assert "/50" in step.text
    # its timeline and the journal list name what the watchdog did
    wait(browser, lambda d: "power-" in cell(d, "silent", "timeline").text)
    marks = browser.find_elements("css selector", '#duts tr[data-dut="silent"] svg rect.ev-failure')
    assert marks, "no failure mark on the silent DUT's timeline"
    assert "hang-detected" in browser.find_element("id", "journal").text


def test_configurations_carry_the_analysis_numbers_while_the_campaign_runs(browser, live):
    where = '#groups tr[data-group="streamer/app/OFF"][data-class="sdc"]'

    def read_row(d):  # in one go: the page replaces the row on every update, so a kept reference goes stale
        row = d.find_elements("css selector", where)[0]
        return (
            int(row.find_element("css selector", ".g-events").text),
            float(row.find_element("css selector", ".g-sigma").get_attribute("data-sigma")),
            row.find_element("css selector", ".g-needed").text,
        )

    events_, sigma, needed = wait(browser, read_row, timeout=30)
    assert events_ >= 1 and sigma > 0 and "of beam for" in needed
    status = browser.find_element("id", "groups-status").text
    assert "computed by the analysis" in status and "in progress" in status
    fac = browser.find_element("id", "facility").text
    assert "facility-counts.txt" in fac and "beam on" in fac


def test_an_unreadable_journal_line_is_named_and_supervision_goes_on(browser, live):
    j = live.c.server.journal
    with open(j, "ab") as f:
        f.write(b"\x00\x9c not json: written by something else\n")
    lineno = j.read_bytes().count(b"\n")
    text = wait(browser, lambda d: "could not be read" in warnings(d) and warnings(d))
    assert f"line {lineno}" in text
    cycles = live.server.supervisors["silent"].snap.total_power_cycles
    send_legacy(live.c.server.udp_port, "#IT Ite:2000 KerTime:0.0100000 AccTime:20.0000000")
    wait(browser, lambda d: cell(d, "quiet", "rate").get_attribute("title") == "iteration 2000", timeout=2.0)
    wait(
        browser, lambda d: live.server.supervisors["silent"].snap.total_power_cycles > cycles, timeout=POWER_OFF_S + 10
    )


def _open_streams(port: int, n: int) -> tuple[list[socket.socket], list[str]]:
    """``n`` connections at once asking for the event stream; the status line each got."""
    socks: list[socket.socket] = []
    statuses: list[str] = [""] * n
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
    request = f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()

    def go(i: int) -> None:
        socks[i].sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = socks[i].recv(256)
            if not chunk:
                break
            head += chunk
        statuses[i] = head.split(b"\r\n", 1)[0].decode()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return socks, statuses


def _health(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "api/health", timeout=5) as r:
        return json.loads(r.read())


def test_a_hundred_connections_and_pages_that_vanish_mid_stream(browser, live):
    main = browser.current_window_handle
    before = _health(live.url)["clients"]  # this browser's page
    socks, statuses = _open_streams(live.server.dashboard.port, 100)
    try:
        ok = sum(s.endswith(" 200 OK") for s in statuses)
        refused = sum(" 503 " in s for s in statuses)
        assert ok == 32 - before and refused == 100 - ok, statuses
        # Another page now: it says why it has no stream, instead of showing numbers it does not have.
        browser.switch_to.new_window("tab")
        browser.get(live.url)
        text = wait(
            browser, lambda d: "refused" in d.find_element("id", "conn").text and d.find_element("id", "conn").text
        )
        assert "32 pages are already open" in text
        browser.close()
        browser.switch_to.window(main)
        # The first page still follows the campaign, and the watchdogs still act.
        send_legacy(live.c.server.udp_port, "#IT Ite:3000 KerTime:0.0100000 AccTime:30.0000000")
        wait(browser, lambda d: cell(d, "quiet", "rate").get_attribute("title") == "iteration 3000", timeout=2.0)
    finally:
        for s in socks:  # gone mid-stream, without a goodbye (RST)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    wait(browser, lambda d: _health(live.url)["clients"] <= before, timeout=10)
    health = _health(live.url)
    assert health["refused"] >= 68 and health.get("disconnected", 0) + health.get("dropped-write", 0) >= 1
    # The journal holds the foreign line written above (read_journal rightly refuses it): read around it.
    records = []
    for line in live.c.server.journal.read_bytes().splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    assert records and not [r for r in records if r.get("event") == "supervisor-error"]
    send_legacy(live.c.server.udp_port, "#IT Ite:3001 KerTime:0.0100000 AccTime:30.0100000")
    wait(browser, lambda d: cell(d, "quiet", "rate").get_attribute("title") == "iteration 3001", timeout=2.0)


def test_a_facility_log_that_stops_growing_is_flagged(browser, live):
    live.facility.stop()
    text = wait(browser, lambda d: "has not grown for" in warnings(d) and warnings(d), timeout=15)
    assert "facility-counts.txt" in text and "fluence after its last row is unknown" in text
    assert state(browser, "streamer") == "running"  # the campaign goes on


def test_the_beam_time_estimate_is_the_analysis_one(browser, tmp_path):
    """``diehard dashboard`` on the real ChipIR sample: every number on the page is ``diehard fit``'s on the same
    files (its own reproduce line is run), and the beam time still needed is the planning formula on them."""
    if not BEAM_LOGS.is_dir() or not FACILITY.is_dir():
        pytest.skip("the real beam-log samples are not here")
    port = free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "diehardlab", "dashboard", str(ROOT / "setups" / "analysis" / "chipir-2016-11.toml"),
         "--logs", str(BEAM_LOGS), "--flux", str(FACILITY / "countlog-2016-11-24.txt"), "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"dashboard: http://127.0.0.1:{port}/", line + proc.stderr.read()
        browser.get(f"http://127.0.0.1:{port}/")
        rows = wait(browser, lambda d: d.find_elements("css selector", "#groups tbody tr[data-group]"), timeout=30)
        page = {}
        for r in rows:
            sig = r.find_element("css selector", ".g-sigma")
            page[(r.get_attribute("data-group"), r.get_attribute("data-class"))] = {
                "events": int(r.find_element("css selector", ".g-events").text),
                "sigma": sig.get_attribute("data-sigma"),
                "hi": float(sig.get_attribute("data-hi")),
                "seconds": r.find_element("css selector", ".g-needed").get_attribute("data-seconds"),
                "needed": r.find_element("css selector", ".g-needed").text,
            }
        repro = browser.find_element("id", "reproduce").text.split(": ", 1)[1]
        assert "from the files" not in repro and repro.startswith("diehard fit ")
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    out = tmp_path / "fit"
    argv = repro.split()
    r = run_diehard(*argv[1 : argv.index("--out")], "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    fit = {(x["group"], x["error_class"]): x for x in csv.DictReader((out / "fit.csv").open())}
    assert {k for k in fit if k[1] in ("sdc", "due")} == set(page)
    target = planning.events_for_width(0.2, 0.95)
    for key, p in page.items():
        f = fit[key]
        assert p["events"] == int(f["events"]) and p["hi"] == float(f["sigma_hi_cm2"])
        want = planning.beam_time_needed(int(f["events"]), target, float(f["beam_on_s"]))
        if want is None:
            assert p["seconds"] == "" and "no events yet" in p["needed"]
        else:
            assert float(p["sigma"]) == float(f["sigma_cm2"])
            assert float(p["seconds"]) == pytest.approx(want, rel=1e-12)
            assert f"for {target - p['events']} more events" in p["needed"]
    assert Path(out / "fit.csv").is_file()
