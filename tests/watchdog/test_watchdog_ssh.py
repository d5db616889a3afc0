"""The SSH transport against a real OpenSSH server on 127.0.0.1 (the DUT), with real benchmark processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from diehardlab.watchdog.transport.ssh import SshError, SshTransport

from diehardlab.campaign import Dut
from tests.watchdog.conftest import ServerThread, app_argv, events, local_campaign, wait_for
from tests.watchdog.emulators import NetioEmulator

ROOT = Path(__file__).resolve().parents[2]


def netio_switch(port: int) -> str:
    """The [[switch]] table of a NETIO emulator on loopback (user admin, password from $NETIO_PW)."""
    return f"""
[[switch]]
name = "netio"
model = "netio"
host = "127.0.0.1"
port = {port}
user = "admin"
password_env = "NETIO_PW"
outlets = 4
timeout_s = 2
settle_s = 1
"""


def ssh_dut(sshd, tmp: Path, liveness: float = 1.5, extra: str = "", known: str = "strict") -> str:
    kh = sshd.known_hosts(tmp / "known_hosts")
    return f"""
[[dut]]
name = "board1"
host = "127.0.0.1"
transport = "ssh"
datagram = "legacy"
source_ip = "127.0.0.1"
liveness_timeout_s = {liveness}
boot_timeout_s = 8
stop_grace_s = 0.5
remote_log_dir = "{tmp}/dut/log"
remote_run_dir = "{tmp}/dut/run"
{extra}
[dut.ssh]
user = "{sshd.user}"
port = {sshd.port}
key = "{sshd.dir / "user_key"}"
known_hosts = "{known}"
known_hosts_file = "{kh}"
connect_timeout_s = 3
command_timeout_s = 5
keepalive_s = 2

[[dut.benchmark]]
name = "sshapp"
argv = {app_argv(extended=False, prefix=("env", f"PYTHONPATH={ROOT}"))}
"""


def _pid(j) -> int:
    return wait_for(lambda: events(j, "benchmark-start", "board1"), timeout=20)[-1]["pid"]


def test_ssh_kill9_restart_and_sftp_pull(tmp_path, sshd):
    path = local_campaign(tmp_path, ssh_dut(sshd, tmp_path))
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        pid = _pid(j)
        sup = srv.server.supervisors["board1"]
        wait_for(lambda: sup.snap.last_iteration >= 3, timeout=20)
        first = next((tmp_path / "dut" / "log").glob("*.log"))
        first.with_name(first.name + ".truth.json").write_text('{"simulated": true}')  # a beam-simulator companion
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(events(j, "benchmark-start", "board1")) >= 2, timeout=10)
        took = time.monotonic() - killed
        wait_for(lambda: events(j, "log-pulled", "board1"))
    assert events(j, "crash-detected", "board1")[0]["cause"] == "app-crash"
    assert took < 1.5 + 1.0
    pulled = sorted((srv.c.server.log_dir / "pulled" / "board1").glob("*.log"))
    remote = sorted((tmp_path / "dut" / "log").glob("*.log"))
    assert pulled and pulled[0].name == remote[0].name
    assert pulled[0].read_text().startswith("#HEADER test app sshapp")
    truth = srv.c.server.log_dir / "pulled" / "board1" / (remote[0].name + ".truth.json")
    assert truth.read_text() == '{"simulated": true}'
    # the server copy was built from legacy datagrams and names the DUT log
    copy = srv.c.server.log_dir / remote[0].name
    assert "#IT 3 " in copy.read_text() and "#SERVER_DUE:soft APP reboot" in copy.read_text()
    # SIGINT path: the benchmark was stopped by PID at server stop, and the stop was journaled
    assert events(j, "benchmark-stop", "board1")[-1]["reason"] == "server-stop"
    last = events(j, "benchmark-start", "board1")[-1]["pid"]
    wait_for(lambda: not Path(f"/proc/{last}").exists() or "Z" in Path(f"/proc/{last}/stat").read_text().split()[2])


def test_ssh_sigstop_hang_restart(tmp_path, sshd):
    path = local_campaign(tmp_path, ssh_dut(sshd, tmp_path, liveness=1.0))
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        pid = _pid(j)
        wait_for(lambda: srv.server.supervisors["board1"].snap.last_iteration >= 2, timeout=20)
        t = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: len(events(j, "benchmark-start", "board1")) >= 2, timeout=10)
    hang = events(j, "hang-detected", "board1")[0]
    assert hang["cause"] == "app-hang"
    assert hang["mono"] - t < 1.0 + 1.0  # detected within the liveness timeout + 1 s (same monotonic clock)
    restarted = events(j, "benchmark-start", "board1")[1]["mono"] - t
    assert restarted < 1.0 + 5.0  # stop by PID and start over SSH, on a loaded CI machine


def test_sshd_gone_is_power_cycled_through_the_switch(tmp_path, sshd, monkeypatch):
    monkeypatch.setenv("NETIO_PW", "s3cret")
    state = {"pid": None}

    def outlet(n: int, on: bool) -> None:
        if on:
            sshd.start()  # power on: the board boots and its sshd comes back
        else:
            sshd.kill_all()  # power off: the host and everything on it stop
            if state["pid"]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(state["pid"], signal.SIGKILL)

    with NetioEmulator(user="admin", password="s3cret", on_change=outlet) as emu:
        switch = netio_switch(emu.port)
        body = switch + ssh_dut(sshd, tmp_path, liveness=1.0, extra='switch = "netio"\noutlet = 3')
        path = local_campaign(tmp_path, body)
        with ServerThread(path) as srv:
            j = srv.c.server.journal
            state["pid"] = _pid(j)
            wait_for(lambda: srv.server.supervisors["board1"].snap.last_iteration >= 2, timeout=20)
            os.kill(state["pid"], signal.SIGSTOP)  # the OS hangs: the benchmark stops and sshd is gone
            sshd.kill_all()
            wait_for(lambda: len(events(j, "benchmark-start", "board1")) >= 2, timeout=25)
            state["pid"] = events(j, "benchmark-start", "board1")[-1]["pid"]
        hang = events(j, "hang-detected", "board1")[0]
        assert hang["cause"] == "os-hang"
        assert events(j, "power-cycle", "board1") and not events(j, "os-reboot", "board1")
        assert [r for m, _, r in emu.requests if m == "POST"][:2] == [
            {"Outputs": [{"ID": 3, "Action": 0}]},
            {"Outputs": [{"ID": 3, "Action": 1}]},
        ]
        assert events(j, "power-on", "board1")


def _dut(sshd, tmp: Path, known: str, kh: Path) -> Dut:
    return Dut.model_validate(
        {
            "name": "b", "host": "127.0.0.1", "transport": "ssh",
            "ssh": {"user": sshd.user, "port": sshd.port, "key": str(sshd.dir / "user_key"), "known_hosts": known,
                    "known_hosts_file": str(kh), "connect_timeout_s": 3, "command_timeout_s": 5},
            "benchmark": [{"name": "x", "argv": ["true"]}],
        }
    )  # fmt: skip


def test_known_hosts_strict_refuses_unknown_and_tofu_pins(tmp_path, sshd):
    kh = tmp_path / "kh"
    strict = SshTransport(_dut(sshd, tmp_path, "strict", kh))
    with pytest.raises(SshError, match=r"not in .*known_hosts = 'strict'"):
        strict._exec("true")
    tofu = SshTransport(_dut(sshd, tmp_path, "tofu", kh))
    assert tofu._exec("echo hi") == (0, "hi\n")
    assert sshd.host_pub[1] in kh.read_text()
    strict2 = SshTransport(_dut(sshd, tmp_path, "strict", kh))
    assert strict2._exec("true")[0] == 0
    # a changed host key is always refused, even with tofu
    kh.write_text(
        kh.read_text().replace(sshd.host_pub[1], "AAAAC3NzaC1lZDI1NTE5AAAAIOtU1Xb5nR0kR4j4ynTS0hQyVbqA0xQ6c0cW3vQq7v2W")
    )
    with pytest.raises(SshError, match="CHANGED"):
        SshTransport(_dut(sshd, tmp_path, "tofu", kh))._exec("true")
    for t in (tofu, strict2):
        asyncio.run(t.close())


def test_ssh_os_reboot_runs_the_reboot_command_and_reconnects(tmp_path, sshd):
    marker = tmp_path / "rebooted"
    extra = f'reboot_command = ["touch", "{marker}"]\n[dut.escalation]\nmax_app_restarts = 0\nmax_os_reboots = 1\n'
    path = local_campaign(tmp_path, ssh_dut(sshd, tmp_path, extra=extra))
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        pid = _pid(j)
        wait_for(lambda: srv.server.supervisors["board1"].snap.last_iteration >= 1, timeout=20)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(events(j, "benchmark-start", "board1")) >= 2, timeout=20)
    assert events(j, "os-reboot", "board1")[0]["cause"] == "app-crash"
    assert marker.exists()
    copy = next(p for p in srv.c.server.log_dir.glob("*.log") if "#SERVER_DUE" in p.read_text())
    assert "#SERVER_DUE:soft OS reboot" in copy.read_text()


def test_wedged_sshd_that_accepts_but_never_answers_is_power_cycled(tmp_path, sshd, monkeypatch):
    """The port still accepts connections (the probe passes) but SSH never answers: a control failure."""
    from tests.watchdog.emulators import DeadSwitch

    monkeypatch.setenv("NETIO_PW", "s3cret")
    state: dict = {"pid": None, "wedge": None}

    def outlet(n: int, on: bool) -> None:
        if on:
            if state["wedge"] is not None:
                state["wedge"].__exit__()
                state["wedge"] = None
            sshd.start()
        elif state["pid"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state["pid"], signal.SIGKILL)

    with NetioEmulator(user="admin", password="s3cret", on_change=outlet) as emu:
        switch = netio_switch(emu.port)
        extra = 'switch = "netio"\noutlet = 1\n[dut.escalation]\nmax_os_reboots = 0\npower_off_s = 0.2\n'
        path = local_campaign(tmp_path, switch + ssh_dut(sshd, tmp_path, liveness=1.0, extra=extra))
        with ServerThread(path) as srv:
            j = srv.c.server.journal
            state["pid"] = _pid(j)
            wait_for(lambda: srv.server.supervisors["board1"].snap.last_iteration >= 2, timeout=20)
            os.kill(state["pid"], signal.SIGSTOP)
            sshd.kill_all()
            state["wedge"] = DeadSwitch(sshd.port).__enter__()  # something holds the port, SSH never answers
            wait_for(lambda: len(events(j, "benchmark-start", "board1")) >= 2, timeout=30)
        assert events(j, "control-error", "board1")
        assert events(j, "hang-detected", "board1")[0]["cause"] == "os-hang"
        assert events(j, "power-cycle", "board1")


def test_ping_and_tcp_probes(tmp_path, sshd):
    import shutil

    ping = Dut.model_validate(
        {
            "name": "p",
            "host": "127.0.0.1",
            "probe": "ping",
            "ssh": {"user": "u"},
            "benchmark": [{"name": "x", "argv": ["x"]}],
        }
    )
    if shutil.which("ping"):
        assert asyncio.run(SshTransport(ping).reachable()) is True
    tcp = _dut(sshd, tmp_path, "strict", tmp_path / "kh")
    assert asyncio.run(SshTransport(tcp).reachable()) is True
    sshd.kill_all()
    assert asyncio.run(SshTransport(tcp).reachable()) is False
