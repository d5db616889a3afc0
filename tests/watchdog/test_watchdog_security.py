"""A hostile or unlucky campaign against the server (issue 18): a second server, forged and replayed
datagrams, a forged #LOGFILE, a server killed with SIGKILL, a torn journal, a missing benchmark binary."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diehardlab.formats.datagram import encode_extended, encode_legacy
from diehardlab.formats.parser import ServerEnd, parse_file
from tests.badinput.battery import check_refused
from tests.conftest import run_diehard
from tests.watchdog.conftest import ServerThread, app_argv, events, local_campaign, wait_for
from tests.watchdog.test_watchdog_local import dut

ROOT = Path(__file__).resolve().parents[2]
SDC = "#SDC Ite:1 KerTime:0.1 AccTime:0.1 KerErr:1 AccErr:1\n"


def _idle(name: str, extra: str = "", liveness: float = 60) -> str:
    """A DUT whose benchmark is an idle process: its copy takes whatever datagrams the test sends."""
    return dut(name, '["sleep", "600"]', liveness=liveness, extra=extra)


def _serve(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "diehardlab.watchdog", "serve", str(path)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _copies(srv) -> dict[str, str]:
    return {p.name: p.read_text() for p in srv.c.server.log_dir.glob("*.log")}


def test_a_second_server_of_the_same_campaign_touches_nothing(tmp_path):
    path = local_campaign(tmp_path, dut("d1", app_argv()))
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: srv.server.supervisors["d1"].snap.last_iteration >= 2)
        key_file = tmp_path / "local-duts" / "d1" / "run" / "datagram.key"
        key = key_file.read_bytes()
        records = len(events(j, "benchmark-start"))
        r = check_refused("serve", str(path), "--duration", "5", names=(str(os.getpid()), "already"))
        assert len(r.lines) == 1
        # nothing of the running campaign was touched: its key, its journal, its datagrams
        assert key_file.read_bytes() == key
        assert not events(j, "resume") and len(events(j, "server-start")) == 1
        it = srv.server.supervisors["d1"].snap.last_iteration
        wait_for(lambda: srv.server.supervisors["d1"].snap.last_iteration > it + 3)
        assert not srv.server.receiver.rejected and len(events(j, "benchmark-start")) == records
        # the port alone (another campaign file on the same port) is refused before anything is written too
        other = tmp_path / "other"
        other.mkdir()
        path2 = local_campaign(other, dut("d9", app_argv()), port=srv.c.server.udp_port)
        check_refused("serve", str(path2), "--duration", "5", names=(str(srv.c.server.udp_port), "in use"))
        assert not (other / "journal.jsonl").exists() and not (other / "local-duts").exists()


def test_unsigned_extended_datagrams_and_foreign_sources_are_refused(tmp_path):
    # "leg" is a legacy DUT (no key): its datagrams count only from its own address, 127.0.0.2
    body = _idle("d1") + _idle("leg", extra='datagram = "legacy"\nsource_ip = "127.0.0.2"').replace(
        'datagram = "extended"\ndatagram_key = "generate"\n', ""
    )
    path = local_campaign(tmp_path, body)
    with ServerThread(path) as srv:
        sups = srv.server.supervisors
        wait_for(lambda: sups["leg"].snap.state == "running" and sups["d1"].snap.state == "running")
        addr = ("127.0.0.1", srv.c.server.udp_port)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # forged unsigned extended datagrams naming the keyless DUT, from anywhere: an SDC, an END, a heartbeat
        for i, line in enumerate([SDC, "#END\n", None]):
            s.sendto(encode_extended(line, False, "leg", f"{i:08x}", 0, None), addr)
        s.sendto(encode_legacy(SDC, False), addr)  # a legacy datagram, but from 127.0.0.1
        good = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        good.bind(("127.0.0.2", 0))
        good.sendto(encode_legacy("#IT 1 KerTime:0.1 AccTime:0.1\n", False), addr)
        wait_for(lambda: srv.server.receiver.received >= 5)
        wait_for(lambda: sups["leg"].datagrams == 1)
        s.close()
        good.close()
        rx = srv.server.receiver
        assert rx.rejected["unsigned"] == 3 and rx.rejected["unknown-source"] == 1
        assert sups["leg"].snap.sdc == 0 and sups["leg"].snap.last_iteration == 1 and not sups["leg"]._ended


def test_a_forged_logfile_never_reaches_another_duts_copy(tmp_path):
    path = local_campaign(tmp_path, _idle("d1") + _idle("d2"))
    with ServerThread(path) as srv:
        sups = srv.server.supervisors
        wait_for(lambda: all(s.snap.state == "running" for s in sups.values()))
        addr = ("127.0.0.1", srv.c.server.udp_port)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def send(name: str, seq: int, line: str) -> None:
            s.sendto(encode_extended(line, False, name, "0000000a", seq, srv.server.keys[name]), addr)

        send("d1", 0, "#LOGFILE /var/log/2026_01_02_03_04_05_app_ECC_OFF_d1.log\n")
        send("d1", 1, "#IT 0 KerTime:0.1 AccTime:0.1\n")
        wait_for(lambda: sups["d1"].copy is not None and sups["d1"].copy.lines == 1)
        victim = sups["d1"].copy.path
        assert victim.name == "2026_01_02_03_04_05_app_ECC_OFF_d1.log"
        before = victim.read_text()
        # d2 (a signed DUT, so its key was stolen or its benchmark is broken) names d1's copy, then an SDC
        send("d2", 0, "#LOGFILE /x/2026_01_02_03_04_05_app_ECC_OFF_d1.log\n")  # before any line: no rename
        send("d2", 1, "#INF hello\n")
        send("d2", 2, "#LOGFILE /x/2026_01_02_03_04_05_app_ECC_OFF_d1.log\n")  # a new run: not into d1's copy
        send("d2", 3, SDC)
        send("d2", 4, "#LOGFILE ../2026_01_02_03_04_05_app_ECC_OFF_d2.log\n")  # its own host: fine
        send("d2", 5, SDC)
        wait_for(lambda: sups["d2"].snap.sdc == 2)
        s.close()
        assert victim.read_text() == before
        assert sups["d2"].copy.path.name == "2026_01_02_03_04_05_app_ECC_OFF_d2.log"
        assert sups["d2"].copy.path.parent == srv.c.server.log_dir
    text = _copies(srv)
    assert sum(t.count(SDC.strip()) for t in text.values()) == 2
    assert all(json.loads(t.splitlines()[0].split(" ", 3)[3])["dut"] == "d2" for t in text.values() if "SDC" in t)
    assert events(srv.c.server.journal, "logfile-refused", "d2")


def test_replays_stay_rejected_across_a_server_killed_and_restarted(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('d1-key = "0123456789abcdef0123456789abcdef"\n')
    secrets.chmod(0o600)
    body = _idle("d1").replace('"generate"', '"d1-key"')
    path = local_campaign(tmp_path, body)
    path.write_text(path.read_text().replace("[server]\n", '[server]\nsecrets_file = "secrets.toml"\n'))
    key = bytes.fromhex("0123456789abcdef0123456789abcdef")
    status = tmp_path / "journal.status.json"
    srv = _serve(path)
    try:
        wait_for(lambda: events(tmp_path / "journal.jsonl", "benchmark-start", "d1"), timeout=20)
        seen = [encode_extended(f"#IT {i} KerTime:0 AccTime:0\n", False, "d1", "cafe0001", i, key) for i in range(3)]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for dg in seen:
            s.sendto(dg, ("127.0.0.1", int(path.read_text().split("udp_port = ")[1].split()[0])))
        wait_for(lambda: status.exists() and json.loads(status.read_text())["duts"]["d1"]["datagrams"] == 3)
    finally:
        srv.kill()  # SIGKILL: the server had no chance to save anything at exit
        srv.wait()
    with ServerThread(path) as srv2:
        addr = ("127.0.0.1", srv2.c.server.udp_port)
        for dg in seen:
            s.sendto(dg, addr)
        time.sleep(1.1)  # past the write-ahead lease of the killed server (see receiver.py)
        s.sendto(encode_extended("#IT 3 KerTime:0 AccTime:0\n", False, "d1", "cafe0002", 0, key), addr)
        rx = srv2.server.receiver
        wait_for(lambda: rx.received == 4)
        s.close()
        assert rx.rejected["replay"] == 3
        assert srv2.server.supervisors["d1"].datagrams == 1


@pytest.mark.parametrize("floor", ["Infinity", "NaN", "1e300", '"soon"', "true", "[]"])
def test_a_damaged_replay_floor_file_fences_at_the_server_clock(tmp_path, floor):
    """Infinity once raised OverflowError at start (a traceback); a floor far ahead, or one that is not a number,
    was taken (or skipped) silently: the DUT's datagrams were then refused as replays for ever, or not fenced."""
    from diehardlab.watchdog.receiver import LEASE_MS, ReplayFloors
    from diehardlab.watchdog.storage import Storage

    path = tmp_path / "journal.replay.json"
    path.write_text(f'{{"floors_ms": {{"d1": 5, "d2": {floor}}}}}')
    before = int(time.time() * 1000)
    floors = ReplayFloors(path, Storage(), window_s=30.0).load(["d1", "d2"])
    after = int(time.time() * 1000)
    assert set(floors) == {"d1", "d2"}
    assert all(before + LEASE_MS <= v <= after + LEASE_MS for v in floors.values()), floors
    path.write_text(f'{{"floors_ms": {{"d1": 5, "d2": {before + 2000}}}}}')  # a DUT clock a little ahead: kept
    rf = ReplayFloors(path, Storage(), window_s=30.0)
    assert rf.load(["d1", "d2"]) == {"d1": 5, "d2": before + 2000} and not rf.note


def test_a_server_killed_with_sigkill_leaves_no_invented_due(tmp_path):
    path = local_campaign(tmp_path, dut("d1", app_argv()))
    j = tmp_path / "journal.jsonl"
    srv = _serve(path)
    try:
        pid = wait_for(lambda: events(j, "benchmark-start", "d1"), timeout=20)[-1]["pid"]
        wait_for(lambda: any(p.read_text().count("#IT") > 3 for p in (tmp_path / "logs").glob("*.log")))
    finally:
        srv.kill()
        srv.wait()
    assert Path(f"/proc/{pid}").exists()  # the benchmark outlived its server
    with ServerThread(path) as srv2:
        wait_for(lambda: len(events(j, "benchmark-start", "d1")) >= 2, timeout=20)
    stop = events(j, "leftover-stop", "d1")
    assert stop and stop[0]["grace_s"] == 0.5
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    own = sorted((tmp_path / "local-duts" / "d1").glob("*.log"))[0].read_text()
    assert "#INF STOP reason:SIGTERM" in own  # stopped with grace: the benchmark closed its own log
    copies = sorted((tmp_path / "logs").glob("*.log"))
    first = copies[0].read_text()
    assert "reason:server-restart" in first
    ends = [r for r in parse_file(copies[0]) if isinstance(r, ServerEnd)]  # (a restart in the same second
    assert ends and all(e.status == "end" for e in ends)  # appends the next run to the same copy)
    from diehardlab.analysis.runs import due_of

    from diehardlab.formats.parser import summarize

    assert due_of(summarize(copies[0]), summarize(copies[0]))[0] == 0
    assert srv2.server.supervisors["d1"].snap.due == 0


def test_a_missing_benchmark_binary_is_reported_and_escalated(tmp_path):
    path = local_campaign(tmp_path, dut("d1", '["/nonexistent/benchmark", "--x"]'))
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: events(j, "broken", "d1"), timeout=20)
        wait_for(lambda: (tmp_path / "journal.status.json").exists())
    failed = events(j, "start-failed", "d1")
    assert failed and "/nonexistent/benchmark" in failed[0]["error"]
    assert not events(j, "supervisor-error", "d1")
    assert events(j, "crash-detected", "d1")[0]["cause"] == "start-failed"
    assert [e["event"] for e in events(j, "app-restart", "d1") + events(j, "os-reboot", "d1")] == [
        "app-restart", "app-restart", "os-reboot",
    ]  # fmt: skip
    # no run began: nothing for the analysis to count as a DUE
    assert srv.server.supervisors["d1"].snap.due == 0 and not list(srv.c.server.log_dir.glob("*.log"))
    r = run_diehard("status", str(path))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("d1 "))
    assert line.split()[1] == "broken"
    assert "/nonexistent/benchmark" in r.stdout  # the last error, for the operator


def test_status_says_when_the_server_has_stopped(tmp_path):
    path = local_campaign(tmp_path, _idle("d1"))
    srv = _serve(path)
    try:
        wait_for(lambda: (tmp_path / "journal.status.json").exists(), timeout=20)
        r = run_diehard("status", str(path))
        assert r.returncode == 0 and "running" in r.stdout.splitlines()[0] and "stopped" not in r.stdout
        assert f"pid {srv.pid}" in r.stdout.splitlines()[0]
    finally:
        srv.send_signal(signal.SIGINT)
        srv.wait(timeout=30)
    r = run_diehard("status", str(path))
    assert r.returncode == 0, r.stderr
    assert "stopped" in r.stdout.splitlines()[0]
    assert next(x for x in r.stdout.splitlines() if x.startswith("d1 ")).split()[1] == "off"
    # the server dies while writing a record that holds a nested object: status and serve still start
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"time":"2026-11-30T10:00:00Z","event":"app-restart","dut":"d1","snap":{"due":3}')
    r = run_diehard("status", str(path))
    assert r.returncode == 0 and "stopped" in r.stdout.splitlines()[0], r.stderr
    r = run_diehard("serve", str(path), "--duration", "1")
    assert r.returncode == 0, r.stderr
    assert events(tmp_path / "journal.jsonl", "server-stop")


def test_journal_torn_after_a_nested_brace(tmp_path):
    from diehardlab.watchdog.journal import Journal, last_snapshots, read_journal

    p = tmp_path / "j.jsonl"
    j = Journal(p)
    j.write("benchmark-start", "d1", snap={"due": 2})
    j.close()
    with open(p, "a") as f:
        f.write('{"time":"2026-11-30T10:00:00Z","event":"app-restart","dut":"d1","snap":{"due":3}')  # torn after }
    assert last_snapshots(read_journal(p)) == {"d1": {"due": 2}}
    j = Journal(p)  # a restarted server ends the torn line and appends after it
    j.write("resume", "d1", snap={"due": 2})
    j.close()
    assert [r["event"] for r in read_journal(p)] == ["benchmark-start", "resume"]
    with open(p, "a") as f:
        f.write('{"event": "x"} trailing garbage\n{"event":"resume","dut":"d1","snap":{"due":2}}\n')
    try:
        read_journal(p)
    except Exception as exc:  # a damaged line in the middle is not a torn last record: say where it is
        assert f"{p}:4" in str(exc)
    else:
        raise AssertionError("a damaged journal line was silently skipped")
