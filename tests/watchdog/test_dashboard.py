"""The dashboard's parts without a browser: binding and tokens, the HTTP side over real sockets, the journal
follower, the event hub's bounded queues, and what each DUT row says.

The page-level behaviour (a real browser against a live server) is in test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from diehardlab.watchdog.dashboard import hub as hubmod
from diehardlab.watchdog.dashboard.hub import Hub, sse
from diehardlab.watchdog.dashboard.state import FileSource, JournalTail, RateMeter, escalation_step
from diehardlab.watchdog.dashboard.web import parse_bind

from diehardlab.campaign import Escalation, load_campaign
from diehardlab.errors import ConfigError
from tests.watchdog.dashboard_kit import live_campaign

TOKEN = "a-long-random-dashboard-token-0123456789"
STATIC = Path(__file__).resolve().parents[2] / "watchdog" / "dashboard" / "static"


def test_bind_addresses():
    assert parse_bind("127.0.0.1:8080").loopback
    assert parse_bind("[::1]:9000").loopback and parse_bind("[::1]:9000").url() == "http://[::1]:9000/"
    assert parse_bind("localhost:1").loopback
    assert parse_bind("8081").host == "127.0.0.1"
    assert not parse_bind("0.0.0.0:8080").loopback
    assert not parse_bind("beamline-server:8080").loopback  # a name may resolve anywhere
    for bad in ("127.0.0.1:http", "127.0.0.1:70000", ":8080"):
        with pytest.raises(ConfigError, match="--bind"):
            parse_bind(bad)


def _dashboard(tmp: Path, bind: str = "127.0.0.1:0", token: str | None = None, **kw):
    from diehardlab.watchdog.dashboard.service import Dashboard
    from diehardlab.watchdog.server import log_folders, status_path

    path = live_campaign(tmp, **kw)
    if token:
        secrets = tmp / "secrets.toml"
        secrets.write_text(f'dashboard = "{token}"\n')
        secrets.chmod(0o600)
        text = path.read_text().replace(
            'journal = "journal.jsonl"', 'journal = "journal.jsonl"\nsecrets_file = "secrets.toml"'
        )
        path.write_text(text + '\ntoken_secret = "dashboard"\n')
    c = load_campaign(path)
    return Dashboard(c, path, bind, log_folders(c), status=status_path(c))


def test_a_network_bind_needs_a_token_from_the_secrets_file(tmp_path):
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0, which is not loopback: it needs a token.*token_secret"):
        _dashboard(tmp_path, "0.0.0.0:8080")
    d = _dashboard(tmp_path, "0.0.0.0:8080", token=TOKEN)  # built, not started: nothing listens
    assert d.guard.token == TOKEN
    assert TOKEN not in (tmp_path / "campaign.toml").read_text()  # the campaign file names the entry only
    with pytest.raises(ConfigError, match="too short"):
        _dashboard(tmp_path, "0.0.0.0:8080", token="short")


async def _get(url: str, path: str, **kw):
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url.rstrip("/") + path, allow_redirects=False, **kw) as r:
        return r.status, dict(r.headers), await r.read()


def test_the_page_is_local_read_only_and_self_contained(tmp_path):
    import aiohttp

    async def main():
        d = _dashboard(tmp_path)
        url = await d.start()
        try:
            status, headers, body = await _get(url, "/")
            assert status == 200 and b"/static/dashboard.js" in body
            assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
            # DNS rebinding: a page bound to loopback answers loopback names only
            status, _, _ = await _get(url, "/", headers={"Host": f"evil.example:{d.port}"})
            assert status == 421
            async with aiohttp.ClientSession() as s:
                for method in ("POST", "PUT", "DELETE"):
                    async with s.request(method, url + "api/state") as r:
                        assert r.status == 405
            status, _, body = await _get(url, "/api/state")
            doc = json.loads(body)
            assert status == 200 and [x["name"] for x in doc["hello"]["duts"]] == ["quiet", "silent", "streamer"]
            # the stream: a reconnection delay, then the full snapshot
            async with aiohttp.ClientSession() as s, s.get(url + "events") as r:
                assert r.headers["Content-Type"].startswith("text/event-stream")
                seen = []
                while len(seen) < 4:
                    line = (await asyncio.wait_for(r.content.readline(), 10)).decode()
                    if line.startswith("event: "):
                        seen.append(line.split()[1])
                assert seen == ["hello", "duts", "journal-snapshot", "groups"]
            assert (await _get(url, "/static/../service.py"))[0] == 404
        finally:
            await d.close()

    asyncio.run(main())
    # Everything the page loads comes from the dashboard itself: no CDN, no font service, no remote script.
    html = (STATIC / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith("/static/") or ref == "data:,", ref
    for name in ("dashboard.js", "dashboard.css"):
        urls = re.findall(r"[a-z]+://[^\s\"')]+", (STATIC / name).read_text())
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, urls  # the SVG namespace name, never fetched
    js = (STATIC / "dashboard.js").read_text()
    assert ".innerHTML" not in js and 'method: "POST"' not in js


def test_with_a_token_only_a_signed_in_browser_or_a_bearer_reads(tmp_path, capsys):
    import aiohttp

    async def main():
        d = _dashboard(tmp_path, token=TOKEN)
        url = await d.start()
        try:
            assert (await _get(url, "/"))[0] == 303
            for path in ("/api/state", "/events", "/static/dashboard.js"):
                assert (await _get(url, path))[0] == 401, path
            # (an IP-address origin: aiohttp's cookie jar keeps its cookies only when told to)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.post(url + "login", data={"token": "wrong-but-long-enough-guess"}) as r:
                    assert r.status == 403
                async with s.post(url + "login", data={"token": TOKEN}, allow_redirects=False) as r:
                    assert r.status == 303
                    cookie = r.headers["Set-Cookie"]
                    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
                async with s.get(url + "api/state") as r:  # the session cookie
                    assert r.status == 200 and TOKEN not in await r.text()
            status, _, _ = await _get(url, "/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
            assert status == 200
        finally:
            await d.close()

    asyncio.run(main())
    err = capsys.readouterr()
    assert "wrong token from 127.0.0.1" in err.err and TOKEN not in err.out + err.err


def test_the_journal_follower_names_what_it_cannot_read(tmp_path):
    j = tmp_path / "journal.jsonl"
    rec = {"time": "2026-01-01T00:00:00.000Z", "event": "hang-detected", "dut": "d1", "cause": "app-hang",
           "snap": {"state": "recovering", "app_restarts": 1}}  # fmt: skip
    j.write_text(json.dumps(rec) + "\n" + "\x00\x01 garbage from a full disk\n" + '{"time": "2026-01-01T00:00:01')
    tail = JournalTail(j)
    got = tail.poll()
    assert [e["event"] for e in got] == ["hang-detected"] and got[0]["detail"] == "cause app-hang"
    assert tail.unreadable_total == 1 and tail.unreadable[0]["line"] == 2
    assert tail.last_snap("d1")[0]["state"] == "recovering"
    with open(j, "a") as f:  # the server finishes the line it was writing
        f.write('.000Z", "event": "app-restart", "dut": "d1", "snap": {"state": "recovering"}}\n')
    assert [e["event"] for e in tail.poll()] == ["app-restart"]
    assert tail.timeline["d1"][-1]["line"] == 3
    j.write_text(json.dumps({**rec, "event": "server-start", "dut": None}) + "\n")  # replaced: read afresh
    assert [e["event"] for e in tail.poll()] == ["server-start"] and tail.unreadable_total == 0


def test_a_slow_page_is_dropped_and_publishing_never_waits(monkeypatch):
    monkeypatch.setattr(hubmod, "WRITE_TIMEOUT_S", 0.2)

    async def main():
        hub = Hub(max_clients=2)
        # A page that stopped reading: its socket never takes a write.
        stuck = hub.add("stuck")
        never = asyncio.Event()

        async def blocked_write(m):
            await never.wait()

        task = asyncio.create_task(hub.stream(stuck, blocked_write, [sse("hello", {})]))
        await asyncio.sleep(0.4)
        assert stuck.dropped.startswith("slow") and stuck not in hub.clients
        await task
        # A page that reads nothing while messages pile up: dropped at QUEUE_LEN, publish returns at once.
        lazy = hub.add("lazy")
        t0 = time.perf_counter()
        for i in range(hubmod.QUEUE_LEN + 5):
            hub.publish(sse("duts", {"i": i}))
        assert time.perf_counter() - t0 < 0.05
        assert lazy.dropped.startswith("slow") and lazy.queue.qsize() == 1  # just the end-of-stream mark
        assert hub.counts["dropped-slow"] == 1 and hub.counts["dropped-write"] == 1
        hub.add("a")
        assert hub.full()  # lazy is still counted until its handler ends; a third page is refused

    asyncio.run(main())


def test_rates_and_escalation_steps():
    m = RateMeter(window_s=10)
    for k in range(11):
        m.add(100.0 + k, 5 * k)
    assert m.rate() == pytest.approx(5.0)
    m.add(112.0, 50)  # silence: the rate falls instead of freezing
    m.add(113.0, 50)
    assert m.rate() < 5.0
    m.add(114.0, 2)  # a new run counts from zero
    assert m.rate() is None
    esc = Escalation(max_app_restarts=3, max_os_reboots=2, max_power_cycles=3, max_cool_downs=1)
    assert escalation_step({"state": "running"}, esc) == "none"
    assert escalation_step({"app_restarts": 3, "os_reboots": 1}, esc) == "OS reboot 1/2"
    assert escalation_step({"power_cycles": 2, "app_restarts": 3}, esc) == "power cycle 2/3"
    assert escalation_step({"state": "broken", "broken": True}, esc).startswith("broken")


def test_the_files_source_says_when_the_server_stopped_writing(tmp_path):
    path = live_campaign(tmp_path)
    c = load_campaign(path)
    status = tmp_path / "journal.status.json"
    tail = JournalTail(c.server.journal)
    src = FileSource(c, status, tail)
    rows, warnings = src.duts()
    assert [r["state"] for r in rows] == ["off"] * 3 and "no server status file" in warnings[0]
    doc = {"time": "2026-01-01T00:00:00Z", "datagrams": 7, "rejected": {},
           "duts": {"streamer": {"state": "running", "sdc": 2, "due": 1, "last_iteration": 40,
                                 "heartbeat_age_s": 0.5, "datagrams": 7, "benchmark": "app"}}}  # fmt: skip
    status.write_text(json.dumps(doc))
    rows, warnings = src.duts()
    s = {r["name"]: r for r in rows}["streamer"]
    assert s["state"] == "running" and s["sdc"] == 2 and s["heard_at"] == pytest.approx(status.stat().st_mtime - 0.5)
    assert not warnings
    old = time.time() - 600
    import os

    os.utime(status, (old, old))
    src._mtime = 0.0  # as if read before the server stopped rewriting it
    _, warnings = src.duts()
    assert "may have stopped" in warnings[0]


def test_mistyped_numbers_in_the_status_file_or_the_journal_are_named_and_the_page_goes_on(tmp_path):
    """A status file or a journal snapshot whose counters are not numbers once stopped the page's DUT rows for
    good (and 'diehard dashboard' with a traceback): now the status file is 'unreadable' (the last good one is
    kept) and the journal line is one of the lines the timeline could not read."""
    import os

    path = live_campaign(tmp_path)
    c = load_campaign(path)
    status = tmp_path / "journal.status.json"
    tail = JournalTail(c.server.journal)
    src = FileSource(c, status, tail)
    good = {"time": "2026-01-01T00:00:00Z", "duts": {"streamer": {"state": "running", "sdc": 2, "last_iteration": 9,
                                                                 "heartbeat_age_s": 0.5, "datagrams": 7}}}  # fmt: skip
    status.write_text(json.dumps(good))
    assert {r["name"]: r for r in src.duts()[0]}["streamer"]["sdc"] == 2
    for field, value in (("sdc", "lots"), ("last_iteration", 1.5), ("heartbeat_age_s", "soon")):
        bad = json.loads(json.dumps(good))
        bad["duts"]["streamer"][field] = value
        status.write_text(json.dumps(bad))
        t = time.time() + len(field)  # a new modification time: the file is read again
        os.utime(status, (t, t))
        rows, warnings = src.duts()
        assert {r["name"]: r for r in rows}["streamer"]["sdc"] == 2  # the last good status stays
        assert any(str(status) in w and "unreadable" in w and field in w for w in warnings), warnings
    line = {"time": "2026-01-01T00:00:01Z", "event": "hang-detected", "dut": "quiet", "snap": {"due": "many"}}
    c.server.journal.write_text(json.dumps(line) + "\n")
    assert len(tail.poll()) == 1 and tail.unreadable_total == 1 and "due" in tail.unreadable[0]["text"]
    rows, _ = src.duts()
    assert {r["name"]: r for r in rows}["quiet"]["due"] == 0


def test_the_files_source_names_the_newest_copy_of_each_running_dut(tmp_path):
    import os
    from datetime import datetime

    from diehardlab.formats.filename import format_log_name

    path = live_campaign(tmp_path)
    c = load_campaign(path)
    c.server.log_dir.mkdir()
    src = FileSource(c, tmp_path / "journal.status.json", JournalTail(c.server.journal))
    names = {}
    for k, (dut, age) in enumerate((("streamer", 5.0), ("streamer", 1.0), ("silent", 1.0), ("quiet", 3600.0))):
        host = c.dut(dut).hostname
        names[k] = format_log_name(datetime(2026, 1, 1, 10, 0, k), "app", False, host)
        p = c.server.log_dir / names[k]
        p.write_text("#SERVER_HEADER {}\n")
        os.utime(p, (time.time() - age, time.time() - age))
    (c.server.log_dir / "notes.log").write_text("not a run\n")
    assert src.in_progress() == []  # no DUT is said to be running
    doc = {"time": "2026-01-01T00:00:00Z", "duts": {d: {"state": "running"} for d in ("streamer", "quiet")}}
    (tmp_path / "journal.status.json").write_text(json.dumps(doc))
    src.duts()
    # streamer: its newer copy; silent: not running; quiet: its copy is older than its liveness window
    assert src.in_progress() == [names[1]]


def test_the_dashboard_command_needs_neither_torch_nor_the_analysis_packages(tmp_path):
    from tests.conftest import run_diehard

    heavy = ("torch", "pandas", "scipy", "numpy", "matplotlib")
    path = live_campaign(tmp_path)
    r = run_diehard("dashboard", str(path), "--bind", "127.0.0.1:0", "--duration", "1", block=heavy)
    assert r.returncode == 0 and r.stdout.startswith("dashboard: http://127.0.0.1:"), r.stdout + r.stderr
    r = run_diehard("serve", "--help", block=heavy)
    assert r.returncode == 0 and "--dashboard" in r.stdout, r.stderr
