"""The server with the local transport: real benchmark processes that really crash and hang."""

from __future__ import annotations

import os
import signal
import socket
import time

from diehardlab.formats.datagram import encode_extended, encode_legacy
from diehardlab.formats.parser import ServerEnd, parse_file
from tests.watchdog.conftest import ServerThread, app_argv, events, local_campaign, wait_for

SWITCH = """
[[switch]]
name = "sim"
model = "simulated"
outlets = 4
"""


def dut(name: str, argv: str, liveness: float = 1.0, extra: str = "") -> str:
    return f"""
[[dut]]
name = "{name}"
transport = "local"
datagram = "extended"
datagram_key = "generate"
liveness_timeout_s = {liveness}
boot_timeout_s = 2
local_boot_s = 0.2
stop_grace_s = 0.5
{extra}
[[dut.benchmark]]
name = "app"
argv = {argv}
"""


def _pid(journal, dut="d1") -> int:
    return wait_for(lambda: events(journal, "benchmark-start", dut))[-1]["pid"]


def test_kill9_is_an_app_crash_restarted_within_liveness(tmp_path):
    path = local_campaign(tmp_path, dut("d1", app_argv()))
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        pid = _pid(j)
        wait_for(lambda: srv.server.supervisors["d1"].snap.last_iteration >= 3)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(events(j, "benchmark-start", "d1")) >= 2, timeout=5)
        restarted = time.monotonic() - killed
        # a restart within the same second reuses the DUT's log name (libLogHelper's naming): count runs
        wait_for(lambda: sum(p.read_text().count("#SERVER_HEADER") for p in srv.c.server.log_dir.glob("*.log")) >= 2)
    crash = events(j, "crash-detected", "d1")
    assert crash and crash[0]["cause"] == "app-crash"
    assert events(j, "app-restart", "d1")[0]["cause"] == "app-crash"
    assert restarted < 1.0 + 1.0  # liveness timeout + 1 s
    copies = sorted(srv.c.server.log_dir.glob("*.log"))
    first = list(parse_file(copies[0]))
    end = [r for r in first if isinstance(r, ServerEnd)]
    assert end and end[0].status == "due" and end[0].reason == "soft APP reboot"
    assert "#INF DUE cause:app-crash action:app-restart" in copies[0].read_text()
    # the DUT's own logs were pulled beside the server copies
    assert events(j, "log-pulled", "d1")
    assert list((srv.c.server.log_dir / "pulled" / "d1").glob("*.log"))


def test_sigstop_is_a_hang_and_the_group_is_killed(tmp_path):
    path = local_campaign(tmp_path, dut("d1", app_argv(), liveness=0.8))
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        pid = _pid(j)
        wait_for(lambda: srv.server.supervisors["d1"].snap.last_iteration >= 2)
        stopped = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: len(events(j, "benchmark-start", "d1")) >= 2, timeout=5)
        took = time.monotonic() - stopped
        wait_for(lambda: _gone(pid))
    hang = events(j, "hang-detected", "d1")[0]
    assert hang["cause"] == "app-hang" and hang["silent_s"] >= 0.8
    assert took < 0.8 + 1.0


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_full_escalation_to_broken(tmp_path):
    # crashes before its first iteration, every time: nothing ever resets the counters
    body = SWITCH + dut("d1", app_argv("--crash-after", "0"), extra='switch = "sim"\noutlet = 2')
    path = local_campaign(tmp_path, body)
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: events(j, "broken", "d1"), timeout=25)
    seq = [r["event"] for r in events(j, "app-restart") + events(j, "os-reboot") + events(j, "power-cycle")
           + events(j, "cool-down") + events(j, "broken")]  # fmt: skip
    order = [r["event"] for r in sorted((r for r in _all(j) if r["event"] in set(seq)), key=lambda r: r["mono"])]
    assert order == ["app-restart", "app-restart", "os-reboot", "power-cycle", "cool-down", "broken"]
    assert srv.server.supervisors["d1"].snap.state == "broken"
    assert events(j, "power-off", "d1") and events(j, "power-on", "d1")


def _all(j):
    from diehardlab.watchdog.journal import read_journal

    return read_journal(j)


def test_progress_resets_the_counters(tmp_path):
    path = local_campaign(tmp_path, dut("d1", app_argv("--crash-after", "4")))
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: len(events(j, "app-restart", "d1")) >= 4, timeout=20)
    assert not events(j, "os-reboot", "d1")  # 4 crashes > max_app_restarts = 2, but each run made progress
    assert events(j, "progress", "d1")
    assert srv.server.supervisors["d1"].snap.total_app_restarts >= 4


def test_one_dut_failing_never_stops_another(tmp_path):
    body = dut("bad", '["/nonexistent/benchmark"]') + dut("good", app_argv())
    path = local_campaign(tmp_path, body)
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: events(j, "broken", "bad"), timeout=20)
        it0 = srv.server.supervisors["good"].snap.last_iteration
        wait_for(lambda: srv.server.supervisors["good"].snap.last_iteration > it0 + 5)
    assert "nonexistent" in events(j, "start-failed", "bad")[0]["error"]
    assert not events(j, "crash-detected", "good")


def test_forged_replayed_and_legacy_datagrams_are_rejected(tmp_path):
    path = local_campaign(tmp_path, dut("d1", app_argv()))
    with ServerThread(path) as srv:
        wait_for(lambda: srv.server.supervisors["d1"].snap.last_iteration >= 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr = ("127.0.0.1", srv.c.server.udp_port)
        forged = encode_extended(
            "#SDC Ite:1 KerTime:0 AccTime:0 KerErr:1 AccErr:1\n", False, "d1", "0badc0de", 0, b"k" * 32
        )
        s.sendto(forged, addr)
        s.sendto(encode_extended("#IT 1\n", False, "ghost", "00000001", 0, None), addr)
        s.sendto(encode_legacy("#SDC Ite:1 KerTime:0 AccTime:0 KerErr:1 AccErr:1\n", False), addr)
        key = srv.server.keys["d1"]
        good = encode_extended("#INF hello\n", False, "d1", "12345678", 0, key)
        s.sendto(good, addr)
        s.sendto(good, addr)  # replay
        s.close()
        rx = srv.server.receiver
        wait_for(lambda: sum(rx.rejected.values()) >= 4)
    assert rx.rejected["bad-mac"] == 1
    assert rx.rejected["unknown-dut"] == 1
    assert rx.rejected["replay"] == 1
    assert rx.rejected["unknown-source"] == 1  # legacy datagram: d1 is keyed, so its address proves nothing
    assert srv.server.supervisors["d1"].snap.sdc == 0


def test_server_restart_resumes_counters_and_rotation(tmp_path):
    body = dut("d1", app_argv()).replace(
        '[[dut.benchmark]]\nname = "app"',
        '[[dut.benchmark]]\nname = "first"\nwindow_s = 0.6\nargv = '
        + app_argv()
        + '\n[[dut.benchmark]]\nname = "app"\nwindow_s = 60',
    )
    path = local_campaign(tmp_path, body)
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: events(j, "rotate", "d1"))
        pid = wait_for(lambda: events(j, "benchmark-start", "d1")[1:])[-1]["pid"]
        wait_for(lambda: srv.server.supervisors["d1"].snap.last_iteration >= 1)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: events(j, "app-restart", "d1"))
        time.sleep(0.3)
    before = srv.server.supervisors["d1"].snap
    assert events(j, "benchmark-stop", "d1")[-1]["reason"] == "server-stop"
    assert before.bench == 1 and before.total_app_restarts == 1 and before.due == 1
    with ServerThread(path) as srv2:
        wait_for(lambda: len(events(j, "benchmark-start", "d1")) >= 4)
        after = srv2.server.supervisors["d1"].snap
        assert events(j, "resume", "d1")
        assert (after.bench, after.total_app_restarts, after.due) == (1, 1, 1)
    starts = events(j, "benchmark-start", "d1")
    assert [s["benchmark"] for s in starts] == ["first", "app", "app", "app"]


def test_a_run_that_dies_before_its_first_line_keeps_its_due_record(tmp_path):
    path = local_campaign(tmp_path, dut("d1", '["false"]'))  # no switch: app restarts, OS reboot, then broken
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: events(j, "broken", "d1"), timeout=20)
    text = "".join(p.read_text() for p in sorted(srv.c.server.log_dir.glob("*.log")))
    assert text.count("#SERVER_HEADER") == 4  # the first run and three restarts
    assert text.count("#SERVER_DUE:soft APP reboot") == 2 and text.count("#SERVER_DUE:soft OS reboot") == 1
    assert "#SERVER_UNKNOWN" in text  # the run after the reboot: no action left, the DUT is broken


def test_start_timeout_covers_a_slow_start_but_not_a_later_hang(tmp_path):
    # 2.5 s of silence before the first line (a model loading) under a 1 s liveness timeout: without a start
    # timeout that is a hang; with start_timeout_s = 6 the run is left alone until it speaks, then watched.
    slow = app_argv("--startup-s", "2.5", "--hang-after", "10")
    body = dut("slow", slow).replace('name = "app"', 'name = "app"\nstart_timeout_s = 6') + dut("plain", slow)
    path = local_campaign(tmp_path, body)
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: events(j, "hang-detected", "slow"), timeout=20)
        first_plain = wait_for(lambda: events(j, "hang-detected", "plain"), timeout=20)[0]
    hang = events(j, "hang-detected", "slow")[0]
    # the slow starter was left alone until it spoke; its first hang is the real one, after its iterations
    assert hang["snap"]["last_iteration"] >= 5
    # without the start timeout, the silent start itself was judged a hang
    assert first_plain["snap"]["last_iteration"] <= 0 and first_plain["silent_s"] < 2.5
