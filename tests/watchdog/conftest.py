"""Fixtures of the watchdog tests: free ports, campaign files for the local transport, server runs."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DUT_APP = HERE / "dut_app.py"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def app_argv(*extra: str, extended: bool = True, prefix: tuple[str, ...] = ()) -> str:
    """The benchmark argv as a TOML list, with the server's placeholders (``prefix`` goes before python)."""
    argv = [*prefix, sys.executable, str(DUT_APP), "--server", "{server_host}:{server_port}", "--log-dir", "{log_dir}",
            "--bench", "{benchmark}", "--hostname", "{hostname}"]  # fmt: skip
    if extended:
        argv += ["--dut", "{dut}", "--key-file", "{key_file}"]
    argv += list(extra)
    return "[" + ", ".join(f'"{a}"' for a in argv) + "]"


def local_campaign(tmp: Path, body: str, port: int | None = None, escalation: str = "", name: str = "test") -> Path:
    port = port or free_port()
    text = textwrap.dedent(f"""
        [campaign]
        name = "{name}"

        [server]
        bind = "127.0.0.1"
        udp_port = {port}
        log_dir = "logs"
        journal = "journal.jsonl"
        poll_s = 0.1
        status_interval_s = 0.5

        [escalation]
        max_app_restarts = 2
        max_os_reboots = 1
        power_off_s = 0.2
        max_power_cycles = 1
        cool_down_s = 0.3
        max_cool_downs = 1
        {escalation}
        """)
    path = tmp / "campaign.toml"
    path.write_text(text + textwrap.dedent(body))
    return path


class ServerThread:
    """``Server.run`` in a thread with its own event loop, stoppable from the test."""

    def __init__(self, path: Path, duration: float | None = None):
        import asyncio

        from diehardlab.watchdog.server import Server

        from diehardlab.campaign import load_campaign

        self.c = load_campaign(path)
        self.c.server.log_dir.mkdir(parents=True, exist_ok=True)
        self.loop = asyncio.new_event_loop()
        self.server = Server(self.c, str(path))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(duration,), daemon=True)

    def _run(self, duration):
        try:
            self.loop.run_until_complete(self.server.run(duration))
        except BaseException as exc:
            self.error = exc

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.server.receiver is not None or self.error is not None)
        if self.error:
            raise self.error
        return self

    def stop(self):
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.request_stop)
            self.thread.join(timeout=30)
            if self.thread.is_alive():
                raise AssertionError("the server did not stop within 30 s of its stop request")
        if self.error:
            raise self.error

    def __exit__(self, *exc):
        self.stop()


def journal(path: Path) -> list[dict]:
    from diehardlab.watchdog.journal import read_journal

    return read_journal(path)


def wait_for(pred, timeout: float = 15.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def events(path: Path, name: str, dut: str | None = None) -> list[dict]:
    return [r for r in journal(path) if r["event"] == name and (dut is None or r.get("dut") == dut)]


@pytest.fixture
def campaign_dir(tmp_path: Path) -> Path:
    return tmp_path


class Sshd:
    """A real OpenSSH server on 127.0.0.1 with a generated host key and a generated user key (for root)."""

    def __init__(self, root: Path):
        import subprocess

        self.user = getpass.getuser()
        self.dir = root
        self.port = free_port(socket.SOCK_STREAM)
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
        (root / "authorized_keys").chmod(0o600)
        self.host_pub = (root / "host_key.pub").read_text().split()
        self.config = root / "sshd_config"
        self.config.write_text(
            textwrap.dedent(f"""
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {root / "host_key"}
            PidFile {root / "sshd.pid"}
            AuthorizedKeysFile {root / "authorized_keys"}
            StrictModes no
            UsePAM no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            Subsystem sftp internal-sftp
            MaxStartups 100
            LogLevel ERROR
            SetEnv SHLVL=1
            """)
        )
        # SHLVL=1: the session's bash counts as nested and does not source this machine's ~/.bashrc (Debian's bash
        # does for ssh commands). Its `pyenv init` runs `pyenv rehash`; a session the tests SIGKILL mid-rehash
        # leaves pyenv's lock behind, and every later ssh command then waited 60 s for it.
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
        self.proc = None

    def known_hosts(self, path: Path) -> Path:
        path.write_text(f"[127.0.0.1]:{self.port} {self.host_pub[0]} {self.host_pub[1]}\n")
        return path

    def start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)], stderr=subprocess.DEVNULL)
        wait_for(lambda: _connectable(self.port), timeout=10)

    def kill_all(self) -> None:
        """The host is gone: the listener and every session it forked die at once."""
        import signal

        if self.proc is None:
            return
        for pid in [*_descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        self.proc = None


def _connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.fixture
def sshd(tmp_path: Path):
    import shutil

    if not Path("/usr/sbin/sshd").exists() or shutil.which("ssh-keygen") is None:
        pytest.skip("needs OpenSSH (/usr/sbin/sshd, ssh-keygen): apt-get install openssh-server")
    d = tmp_path / "sshd"
    d.mkdir()
    s = Sshd(d)
    s.start()
    yield s
    s.kill_all()
