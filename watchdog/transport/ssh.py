"""SSH transport (paramiko): the server controls a DUT through its OpenSSH server.

- start: the benchmark runs detached (``nohup setsid``, own session and process group), its PID in
  ``<remote_run_dir>/benchmark.pid``, stdout/stderr in ``<remote_run_dir>/<benchmark>.out``;
- stop: by that PID only (SIGTERM to its process group, ``stop_grace_s``, then SIGKILL), never by name;
- reboot: the DUT's ``reboot_command`` (an argv list, quoted with ``shlex``), then reconnect when it is back;
- logs: the ``*.log`` files of ``remote_log_dir`` (and their companions ``<log>.*``, e.g. the beam simulator's
  truth file) that are new or grew are pulled over SFTP after each run and reboot;
- host keys: ``known_hosts = "strict"`` (default) accepts only hosts already in the known_hosts file;
  ``"tofu"`` trusts a new host on first use and pins its key in that file. A changed key is always refused.

Every call has a timeout (connect, banner, auth, each command), the connection has keepalives, and the
blocking paramiko calls run in worker threads so one DUT never stalls another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import threading
import time
from pathlib import Path

import paramiko
from diehardlab.watchdog.transport.local import is_log_file

from diehardlab.campaign import Dut
from diehardlab.errors import DiehardError

PID_FILE = "benchmark.pid"


class SshError(DiehardError):
    """The DUT could not be reached or refused a command over SSH."""


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    def __init__(self, path: Path):
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.path))


class SshTransport:
    kind = "ssh"

    def __init__(self, dut: Dut):
        if dut.ssh is None:
            raise SshError(f"DUT {dut.name!r}: no [dut.ssh] table")
        self.dut = dut
        self.cfg = dut.ssh
        self.log_dir = dut.remote_log_dir
        self.run_dir = dut.remote_run_dir
        self.known_hosts = (self.cfg.known_hosts_file or Path("~/.ssh/known_hosts")).expanduser()
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self._pulled: dict[str, int] = {}

    # -- connection -----------------------------------------------------------------------------------------

    def _connect(self) -> paramiko.SSHClient:
        if self._client is not None:
            t = self._client.get_transport()
            if t is not None and t.is_active():
                return self._client
            self._drop()
        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        if self.cfg.known_hosts == "tofu":
            client.set_missing_host_key_policy(_TrustOnFirstUse(self.known_hosts))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        t = self.cfg.connect_timeout_s
        try:
            client.connect(
                self.dut.host, port=self.cfg.port, username=self.cfg.user,
                key_filename=str(self.cfg.key) if self.cfg.key else None, allow_agent=self.cfg.key is None,
                look_for_keys=False, timeout=t, banner_timeout=t, auth_timeout=t, channel_timeout=t,
            )  # fmt: skip
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise SshError(
                f"DUT {self.dut.name!r}: the host key of {self.dut.host} CHANGED (not the one in {self.known_hosts}); "
                "refusing to connect. If the board was reinstalled, remove its old line from that file."
            ) from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise SshError(
                    f"DUT {self.dut.name!r}: {self.dut.host} is not in {self.known_hosts} (known_hosts = 'strict'). "
                    f"Add its key (ssh-keyscan -p {self.cfg.port} {self.dut.host} >> {self.known_hosts}) or set "
                    "known_hosts = 'tofu' to trust it on first use."
                ) from exc
            raise SshError(f"DUT {self.dut.name!r}: SSH to {self.dut.host}:{self.cfg.port} failed: {exc}") from exc
        except (OSError, EOFError) as exc:
            client.close()
            raise SshError(f"DUT {self.dut.name!r}: cannot connect to {self.dut.host}:{self.cfg.port}: {exc}") from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(max(1, int(self.cfg.keepalive_s)))
        self._client = client
        return client

    def _drop(self) -> None:
        if self._client is not None:
            # closing a dead connection may raise anything paramiko-internal
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def _exec(self, script: str, timeout: float | None = None) -> tuple[int, str]:
        """Run a shell script on the DUT; return (exit status, stdout+stderr). Raises SshError."""
        timeout = timeout or self.cfg.command_timeout_s
        with self._lock:
            client = self._connect()
            try:
                transport = client.get_transport()
                if transport is None:
                    raise SshError(f"DUT {self.dut.name!r}: SSH connection lost")
                chan = transport.open_session(timeout=self.cfg.connect_timeout_s)
                chan.settimeout(timeout)
                chan.set_combine_stderr(True)
                chan.exec_command(script)
                out = b""
                deadline = time.monotonic() + timeout
                while True:
                    if chan.recv_ready():
                        out += chan.recv(65536)
                    elif chan.exit_status_ready():
                        while chan.recv_ready():
                            out += chan.recv(65536)
                        break
                    elif time.monotonic() > deadline:
                        chan.close()
                        raise SshError(f"DUT {self.dut.name!r}: command did not finish within {timeout:g} s")
                    else:
                        time.sleep(0.02)
                rc = chan.recv_exit_status()
                chan.close()
                if rc == -1:  # the channel closed without an exit status: the session died under us
                    raise SshError(f"DUT {self.dut.name!r}: SSH session closed before the command finished")
                return rc, out.decode("utf-8", "replace")
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self._drop()
                raise SshError(f"DUT {self.dut.name!r}: SSH command failed: {exc}") from exc

    async def _run(self, script: str, timeout: float | None = None) -> tuple[int, str]:
        limit = (timeout or self.cfg.command_timeout_s) + self.cfg.connect_timeout_s * 3 + 5
        return await asyncio.wait_for(asyncio.to_thread(self._exec, script, timeout), timeout=limit)

    # -- benchmark ------------------------------------------------------------------------------------------

    def _pidfile(self) -> str:
        return shlex.quote(f"{self.run_dir}/{PID_FILE}")

    async def start(self, bench: str, argv: list[str]) -> int:
        await self.stop(0.0)
        run, log = shlex.quote(self.run_dir), shlex.quote(self.log_dir)
        out = shlex.quote(f"{self.run_dir}/{bench}.out")
        script = (
            f"mkdir -p {run} {log} && cd {run} || exit 1; "
            # a simple command in the background: $! is the benchmark itself (setsid execs, no fork)
            f"nohup setsid {shlex.join(argv)} >> {out} 2>&1 < /dev/null & "
            f"echo $! > {self._pidfile()}; echo $!"
        )
        rc, text = await self._run(script)
        try:
            return int(text.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise SshError(f"DUT {self.dut.name!r}: could not start {bench} (exit {rc}): {text.strip()[:300]}") from exc

    async def is_running(self) -> bool | None:
        """True/False from the DUT; None when the DUT could not be asked (the caller probes the host)."""
        script = (
            f"pid=$(cat {self._pidfile()} 2>/dev/null) || exit 3; "
            'st=$(sed -n "s/^State:[[:space:]]*\\(.\\).*/\\1/p" /proc/$pid/status 2>/dev/null); '
            '[ -n "$st" ] && [ "$st" != Z ] && exit 0; exit 1'
        )
        try:
            rc, _ = await self._run(script)
        except (SshError, asyncio.TimeoutError):
            return None
        return True if rc == 0 else False if rc in (1, 3) else None

    async def stop(self, grace_s: float) -> None:
        """Stop the benchmark by its PID file: SIGTERM to its group, then SIGKILL after ``grace_s``."""
        steps = max(0, int(grace_s * 10))
        script = (
            f"pid=$(cat {self._pidfile()} 2>/dev/null) || exit 0; "
            # only a process group that this PID still leads (a reused PID is left alone)
            'pg=$(sed "s/^.*) //" /proc/$pid/stat 2>/dev/null | cut -d" " -f3); '
            f'if [ "$pg" = "$pid" ]; then kill -TERM -- -$pid 2>/dev/null; kill -CONT -- -$pid 2>/dev/null; '
            f"i=0; while [ $i -lt {steps} ] && kill -0 $pid 2>/dev/null; do sleep 0.1; i=$((i+1)); done; "
            "kill -KILL -- -$pid 2>/dev/null; fi; "
            f"rm -f {self._pidfile()}; exit 0"
        )
        await self._run(script, timeout=grace_s + self.cfg.command_timeout_s)

    # -- host -----------------------------------------------------------------------------------------------

    async def reboot(self) -> None:
        # the connection often drops while the reboot starts
        with contextlib.suppress(SshError, asyncio.TimeoutError):
            await self._run(shlex.join(self.dut.reboot_command) + " >/dev/null 2>&1 &", timeout=10)
        await asyncio.to_thread(self._locked_drop)
        await asyncio.sleep(min(5.0, self.dut.boot_timeout_s / 10))  # let the old sshd go before probing

    def _locked_drop(self) -> None:
        with self._lock:
            self._drop()

    async def reachable(self) -> bool:
        probe = self.dut.probe
        if probe == "none":
            return True
        if probe == "ping":
            proc = await asyncio.create_subprocess_exec(
                "ping", "-c", "1", "-W", "2", self.dut.host,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                return await asyncio.wait_for(proc.wait(), timeout=5) == 0
            except asyncio.TimeoutError:
                proc.kill()
                return False
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.dut.host, self.cfg.port), timeout=min(3.0, self.cfg.connect_timeout_s)
            )
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def wait_up(self, timeout_s: float) -> bool:
        """Until the host answers and an SSH session works (or ``timeout_s`` passes)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.reachable():
                try:
                    rc, _ = await self._run("true", timeout=min(10.0, self.cfg.command_timeout_s))
                    if rc == 0:
                        return True
                except (SshError, asyncio.TimeoutError):
                    pass
            await asyncio.sleep(0.5)
        return False

    def power_lost(self) -> None:
        threading.Thread(target=self._locked_drop, daemon=True).start()

    def power_restored(self) -> None:
        return None

    # -- logs -----------------------------------------------------------------------------------------------

    def _pull(self, dest: Path) -> list[Path]:
        got: list[Path] = []
        with self._lock:
            client = self._connect()
            try:
                sftp = client.open_sftp()
                sftp.get_channel().settimeout(self.cfg.command_timeout_s)
                try:
                    entries = sftp.listdir_attr(self.log_dir)
                except FileNotFoundError:
                    return []
                dest.mkdir(parents=True, exist_ok=True)
                for e in sorted(entries, key=lambda e: e.filename):
                    if not is_log_file(e.filename):
                        continue
                    local = dest / e.filename
                    if self._pulled.get(e.filename) == e.st_size and local.exists():
                        continue
                    tmp = local.with_name(local.name + ".part")
                    sftp.get(f"{self.log_dir}/{e.filename}", str(tmp))
                    os.replace(tmp, local)
                    self._pulled[e.filename] = e.st_size or 0
                    got.append(local)
                sftp.close()
            except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
                self._drop()
                raise SshError(f"DUT {self.dut.name!r}: SFTP pull of {self.log_dir} failed: {exc}") from exc
        return got

    async def pull_logs(self, dest: Path) -> list[Path]:
        return await asyncio.to_thread(self._pull, dest)

    async def close(self) -> None:
        await asyncio.to_thread(self._locked_drop)
