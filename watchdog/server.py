"""``diehard serve``: the campaign server. One asyncio loop, one UDP receiver, one supervisor task per DUT.

Start-up takes the campaign's lock (``<journal>.lock``) and binds the UDP port before it touches anything: a
second server of the same campaign, or one whose port is taken, stops with one line and leaves the running
server's journal, keys and copies alone. A supervisor that raises is journaled (``supervisor-error`` with the
exception) and started again after a pause; the others never notice. SIGINT/SIGTERM stop every benchmark on the
DUTs, pull their logs and journal ``server-stop``. A restarted server reads the journal and resumes each DUT
from its last snapshot, after stopping (with grace) what a server that died left running and closing its
copies. A full disk degrades the server (see ``storage.py``) but never stops its watchdogs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from diehardlab.watchdog.journal import Journal, last_snapshots, read_journal, utc_now_iso
from diehardlab.watchdog.lock import CampaignLock
from diehardlab.watchdog.receiver import Receiver, ReplayFloors, resolve
from diehardlab.watchdog.storage import Storage
from diehardlab.watchdog.supervisor import Context, Snap, Supervisor, substitute
from diehardlab.watchdog.switches import make_switch

from diehardlab.campaign import CampaignFile, Dut, Escalation, load_campaign
from diehardlab.config import read_secrets
from diehardlab.errors import ConfigError, DataError
from diehardlab.formats.datagram import DatagramVerifier, decode_key

RESTART_PAUSE_S = 5.0
DRIVERS = ("lindy-ipower", "ip9258", "dli-legacy", "dli-rest", "netio", "snmp", "command", "simulated")


def escalation_of(c: CampaignFile, dut: Dut) -> Escalation:
    return dut.escalation or c.escalation


def local_root(c: CampaignFile, dut: Dut) -> Path:
    return dut.local_dir or (c.server.log_dir.parent / "local-duts" / dut.name)


def log_folders(c: CampaignFile) -> list[Path]:
    """Where a campaign's logs are: the server copies (with the pulled DUT logs) and local DUTs' own folders."""
    return [c.server.log_dir] + [local_root(c, d) for d in c.duts if d.transport == "local"]


def server_host(c: CampaignFile) -> str:
    if c.server.public_host:
        return c.server.public_host
    return "127.0.0.1" if c.server.bind in ("0.0.0.0", "::", "") else c.server.bind


def campaign_dir(source: str | Path) -> Path:
    return Path(source).resolve().parent if source else Path.cwd()


def status_path(c: CampaignFile) -> Path:
    return c.server.journal.with_name(c.server.journal.stem + ".status.json")


def replay_path(c: CampaignFile) -> Path:
    return c.server.journal.with_name(c.server.journal.stem + ".replay.json")


def datagram_keys(c: CampaignFile) -> dict[str, bytes | None]:
    secrets = read_secrets(c.server.secrets_file) if c.server.secrets_file else None
    keys: dict[str, bytes | None] = {}
    for d in c.duts:
        if d.datagram != "extended":
            keys[d.name] = None
        elif d.datagram_key == "generate":
            keys[d.name] = os.urandom(32)
        elif secrets is None or d.datagram_key not in secrets:
            raise ConfigError(
                f"dut {d.name!r}: datagram_key {d.datagram_key!r} is not in the secrets file ([server] secrets_file)"
            )
        else:
            try:
                keys[d.name] = decode_key(secrets[d.datagram_key])
            except ValueError as exc:
                raise ConfigError(f"dut {d.name!r}: secrets file entry {d.datagram_key!r}: {exc}") from exc
    return keys


def make_transport(c: CampaignFile, dut: Dut) -> Any:
    if dut.transport == "local":
        from diehardlab.watchdog.transport.local import LocalTransport

        return LocalTransport(dut, local_root(c, dut))
    from diehardlab.watchdog.transport.ssh import SshTransport

    return SshTransport(dut)


def problems(c: CampaignFile) -> list[str]:
    """What would stop ``serve`` that the file itself cannot show: missing secrets, unset variables, keys."""
    out = []
    if c.server.secrets_file is not None and os.path.lexists(c.server.secrets_file):
        read_secrets(c.server.secrets_file)  # a secrets file that is there but broken is an error, not a to-do
    try:
        datagram_keys(c)
    except ConfigError as exc:
        out.append(str(exc))
    for sw in c.switches:
        if sw.community_env and sw.community_env not in os.environ:
            out.append(f"switch {sw.name!r}: environment variable {sw.community_env} is not set (its SNMP community)")
        if sw.password_env and sw.password_env not in os.environ:
            out.append(f"switch {sw.name!r}: environment variable {sw.password_env} is not set (its password)")
    for sw in c.switches:
        if sw.model not in DRIVERS:
            out.append(
                f"switch {sw.name!r}: model {sw.model!r} has no driver in this version (have: {', '.join(DRIVERS)})"
            )
    for d in c.duts:
        if d.ssh is not None and d.ssh.key is not None and not d.ssh.key.expanduser().exists():
            out.append(f"dut {d.name!r}: SSH key {d.ssh.key} does not exist")
    return out


def plan(c: CampaignFile, source: str) -> str:
    """What ``diehard serve --check`` prints: everything the server would do, with argv substituted."""
    s = c.server
    out = [
        f"campaign {c.campaign.name} ({source})",
        f"  server: udp {s.bind}:{s.udp_port} (DUTs send to {server_host(c)}), logs {s.log_dir}, journal {s.journal}",
    ]
    if c.notify:
        hook = "{0.scheme}://{0.hostname}/...".format(urlsplit(c.notify.webhook_url))  # paths often hold a token
        out.append(f"  notify: {hook} on {', '.join(c.notify.events)} (timeout {c.notify.timeout_s:g} s)")
    for sw in c.switches:
        where = sw.host + (f":{sw.port}" if sw.port else "") if sw.host else "-"
        cred = (
            f"password from ${sw.password_env}"
            if sw.password_env
            else (f"secret {sw.secret!r}" if sw.secret else "no password")
        )
        out.append(
            f"  switch {sw.name}: {sw.model} at {where}, {sw.outlets} outlets, timeout {sw.timeout_s:g} s, {cred}"
        )
    for d in c.duts:
        e = escalation_of(c, d)
        out.append(f"  dut {d.name} (host {d.host}, log hostname {d.hostname}, transport {d.transport}):")
        if d.transport == "ssh" and d.ssh:
            out.append(
                f"    ssh {d.ssh.user}@{d.host}:{d.ssh.port} key {d.ssh.key or 'agent'}, "
                f"known_hosts {d.ssh.known_hosts}"
            )
        else:
            out.append(f"    local folder {local_root(c, d)} (boot {d.local_boot_s:g} s)")
        power = f"switch {d.switch} outlet {d.outlet}" if d.switch else "no switch (no hardware watchdog)"
        out.append(
            f"    power: {power}; console: {d.console or '-'}; datagrams: {d.datagram}; ecc {d.ecc}; "
            f"liveness {d.liveness_timeout_s:g} s, boot {d.boot_timeout_s:g} s"
        )
        out.append(
            f"    escalation{' (DUT override)' if d.escalation else ''}: {e.max_app_restarts} app restarts -> "
            f"{e.max_os_reboots} OS reboots -> {e.max_power_cycles} power cycles ({e.power_off_s:g} s off) -> "
            f"{e.max_cool_downs} cool-downs ({e.cool_down_s:g} s) -> broken"
        )
        root = local_root(c, d)
        values = {
            "server_host": server_host(c),
            "server_port": str(s.udp_port),
            "dut": d.name,
            "hostname": d.hostname,
            "log_dir": str(root) if d.transport == "local" else d.remote_log_dir,
            "run_dir": str(root / "run") if d.transport == "local" else d.remote_run_dir,
            "ecc": d.ecc,
            "key_file": str(root / "run" / "datagram.key") if d.datagram == "extended" else "",
            "campaign_dir": str(campaign_dir(source)),
            "python": sys.executable,
        }
        for b in d.benchmarks:
            argv = substitute(b.argv, {**values, "benchmark": b.name})
            out.append(f"    benchmark {b.name} (window {b.window_s:g} s): {' '.join(argv)}")
    return "\n".join(out)


class Server:
    def __init__(
        self, campaign: CampaignFile, source: str = "", reset: list[str] | None = None, dashboard: str | None = None
    ):
        self.c = campaign
        self.source = source
        self.reset = set(reset or [])
        for name in self.reset:
            campaign.dut(name)  # a typo in --reset is an error, not a silent no-op
        self.storage = Storage()
        self.journal: Journal = None  # type: ignore[assignment]  # opened by run(), after the lock and the port
        # The live web page (--dashboard ADDR): its own tasks on this loop, reading the supervisors, never
        # acting on them; built first, so that a bad address or a missing token stops the start, not a campaign.
        self.dashboard = None
        if dashboard is not None:
            from diehardlab.watchdog.dashboard.service import Dashboard

            self.dashboard = Dashboard(campaign, source, dashboard, log_folders(campaign), server=self)
        self.keys = datagram_keys(campaign)
        self.verifier = DatagramVerifier(dict(self.keys), window_s=campaign.server.datagram_window_s)
        self.floors = ReplayFloors(replay_path(campaign), self.storage, campaign.server.datagram_window_s)
        self.supervisors: dict[str, Supervisor] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.receiver: Receiver | None = None
        self._stop = asyncio.Event()
        self.consoles: list[Any] = []
        self.notifier = None
        self._lock = CampaignLock(campaign.server.journal)
        self._records: list[dict[str, Any]] = []
        self.lost_records = 0  # journal records the disk never took (printed on stderr at exit)

    # -- start-up: claim the campaign, then open its files ----------------------------------------------------

    def _claim(self) -> socket.socket:
        """The campaign's lock, then the UDP port; nothing of the campaign is written before both are ours."""
        s = self.c.server
        where = f"{s.bind}:{s.udp_port}"
        self._lock.acquire(self.c.campaign.name, {"udp": where, "started": utc_now_iso(), "source": self.source})
        try:
            return self._bind(where)
        except BaseException:
            self._lock.release()
            raise

    def _bind(self, where: str) -> socket.socket:
        s = self.c.server
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                s.bind or None, s.udp_port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise ConfigError(f"[server] bind {s.bind!r}: {exc.strerror or exc}") from exc
        try:
            # a flood of junk must not push the DUTs' datagrams out of the queue while the loop is busy
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            src = self.source or "the campaign file"
            if exc.errno == errno.EADDRINUSE:
                msg = f"udp {where} is in use by another program (another campaign's server?): choose another "
                msg += f"[server] udp_port in {src}"
            else:
                msg = f"cannot bind udp {where} ({exc.strerror or exc}): check [server] bind and udp_port in {src}"
            raise ConfigError(msg) from exc
        return sock

    def _open(self) -> None:
        """Read the journal (a damaged one stops the start), then open the log folder and the journal."""
        c = self.c
        self._records = read_journal(c.server.journal)
        for name, snap in last_snapshots(self._records).items():  # what each DUT resumes from must be whole
            why = Snap.problem(snap)
            if why is not None:
                raise DataError(
                    f"{c.server.journal}: the last snapshot of DUT {name!r} is damaged ({why}); fix or move that "
                    "journal line away"
                )
        folders = (("[server] log_dir", c.server.log_dir), ("[server] journal's folder", c.server.journal.parent))
        for what, path in folders:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{path}: cannot make {what} ({exc.strerror or exc})") from exc
        try:
            self.journal = Journal(c.server.journal, self.storage)
        except OSError as exc:
            raise ConfigError(f"{c.server.journal}: cannot open the journal ({exc.strerror or exc})") from exc
        self.verifier.floors = self.floors.load([d.name for d in c.duts])
        if c.notify is not None:
            from diehardlab.watchdog.notify import Notifier

            self.notifier = Notifier(c.notify, c.campaign.name, self.journal)

    def _build(self) -> None:
        c = self.c
        secrets = read_secrets(c.server.secrets_file) if c.server.secrets_file else None
        snaps = last_snapshots(self._records)
        ctx = Context(
            self.journal, c.server.log_dir, server_host(c), c.server.udp_port, c.server.poll_s,
            campaign_dir(self.source), self.notifier, self.storage,
        )  # fmt: skip
        for d in c.duts:
            switch = make_switch(c.switch(d.switch), secrets, c.server.journal.parent) if d.switch else None
            transport = make_transport(c, d)
            key_file = None
            key = self.keys.get(d.name)
            if d.transport == "local" and key is not None:
                key_file = transport.run_dir / "datagram.key"
                try:
                    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    try:
                        os.write(fd, key.hex().encode() + b"\n")
                    finally:
                        os.close(fd)
                    os.chmod(key_file, 0o600)
                except OSError as exc:
                    msg = f"{key_file}: cannot write DUT {d.name!r}'s datagram key ({exc.strerror or exc})"
                    raise ConfigError(msg) from exc
            snap = Snap.from_dict(snaps[d.name]) if d.name in snaps else None
            reset = d.name in self.reset and snap is not None
            if reset:
                # An operator looked at the board: a fresh escalation, same totals and rotation position.
                snap.broken = False
                snap.app_restarts = snap.os_reboots = snap.power_cycles = snap.cool_downs = 0
            sup = Supervisor(d, escalation_of(c, d), transport, switch, ctx, snap, key_file)
            self.supervisors[d.name] = sup
            if snap is not None:
                sup.log("reset" if reset else "resume", from_state=snap.state)

    async def _supervise(self, sup: Supervisor) -> None:
        """Run one DUT's supervisor forever: an exception is journaled and the supervisor starts again,
        after a pause that doubles while it keeps failing quickly (up to a minute)."""
        failures = 0
        while True:
            began = time.monotonic()
            try:
                await sup.run()
                return  # broken: nothing more to do for this DUT
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = 1 if time.monotonic() - began > 120 else failures + 1
                sup.log(
                    "supervisor-error",
                    error=f"{type(exc).__name__}: {exc}"[:500],
                    traceback=traceback.format_exc()[-2000:],
                )
                sup._close_copy("broken", "unknown")
                await asyncio.sleep(min(60.0, RESTART_PAUSE_S * 2 ** (failures - 1)))

    async def _status_loop(self) -> None:
        path = status_path(self.c)
        while True:
            self.write_status(path)
            for sup in self.supervisors.values():
                if sup.copy is not None:
                    sup.copy.sync()  # a server crash or power loss loses at most one interval of the copies
            self.retry_storage()
            await asyncio.sleep(self.c.server.status_interval_s)

    def retry_storage(self) -> None:
        """Write what a full disk held back; journal the episode once it is over."""
        ended = self.storage.retry()
        if ended is not None:
            self.journal.write(
                "storage-recovered", None, since=ended["since"], first_error=ended["first"], failures=ended["failures"]
            )

    def status_doc(self, state: str = "running") -> dict[str, Any]:
        now = time.time()
        trouble = {"since": self.storage.since, "first_error": self.storage.first} if self.storage.degraded else None
        return {
            "time": utc_now_iso(),
            "pid": os.getpid(),
            "server": state,
            "datagrams": self.receiver.received if self.receiver else 0,
            "rejected": dict(self.receiver.rejected) if self.receiver else {},
            "storage": trouble,
            "duts": {
                name: {
                    **asdict(s.snap),
                    "benchmark": s.bench.name,
                    "heartbeat_age_s": round(now - s.last_heard_wall, 1) if s.last_heard_wall else None,
                    "datagrams": s.datagrams,
                    "last_error": s.last_error,
                }
                for name, s in self.supervisors.items()
            },
        }

    def write_status(self, path: Path, state: str = "running") -> None:
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.status_doc(state), indent=1))
            os.replace(tmp, path)
        except OSError as exc:  # a full disk: the status file waits, the watchdogs do not
            self.storage.failed(path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    async def _cancel_supervisors(self) -> None:
        # Cancel until every task is done: on Python < 3.12, asyncio.wait_for can swallow a cancellation
        # that arrives just as its inner task finishes, and a supervisor must never outlive the server.
        for sup in self.supervisors.values():
            sup.stopping = True
        pending = {t for t in self.tasks.values() if not t.done()}
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, duration_s: float | None = None) -> int:
        loop = asyncio.get_running_loop()
        sock = self._claim()
        try:
            if self.dashboard is not None:  # after the lock and the UDP port, before anything runs or is written
                from diehardlab.watchdog.dashboard.service import announce

                await self.dashboard.start()
                print(announce(self.dashboard), flush=True)
            self._open()
            self._build()
        except BaseException:
            sock.close()
            if self.dashboard is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.dashboard.close(), timeout=15)
            if self.journal is not None:
                self.journal.close()
            self._lock.release()
            raise
        by_name = dict(self.supervisors)
        legacy_by_ip: dict[str, list[Supervisor]] = {}
        for d in self.c.duts:
            if d.datagram == "legacy":
                ip = d.source_ip or resolve(d.host)
                if ip:
                    legacy_by_ip.setdefault(ip, []).append(self.supervisors[d.name])
        self.receiver = Receiver(self.verifier, by_name, legacy_by_ip, self.floors)
        transport, _ = await loop.create_datagram_endpoint(lambda: self.receiver, sock=sock)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        self.journal.write(
            "server-start", None, campaign=self.c.campaign.name, pid=os.getpid(), udp=self.c.server.udp_port,
            duts=[d.name for d in self.c.duts],
        )  # fmt: skip
        if self.floors.note:
            self.journal.write("replay-floors-reset", None, note=self.floors.note)
        self._start_consoles()
        for name, sup in self.supervisors.items():
            self.tasks[name] = loop.create_task(self._supervise(sup), name=f"dut-{name}")
        status = loop.create_task(self._status_loop())
        try:
            if duration_s is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=duration_s)
            else:
                await self._stop.wait()
        finally:
            await self._cancel_supervisors()
            await asyncio.gather(*(s.stop_for_shutdown() for s in self.supervisors.values()), return_exceptions=True)
            for s in self.supervisors.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.transport.close(), timeout=10)
            for con in self.consoles:
                con.stop()
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status
            transport.close()
            self.floors.close(self.verifier.newest_ms)
            self.retry_storage()
            self.write_status(status_path(self.c), "stopped")
            self.journal.write(
                "server-stop", None, datagrams=self.receiver.received, rejected=dict(self.receiver.rejected)
            )
            if self.dashboard is not None:  # after server-stop, so the page's timeline shows the stop
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.dashboard.close(), timeout=15)
            self.lost_records = self.journal.close()
            self.storage.give_up()
            self._lock.release()
        return 1 if self.lost_records else 0

    def _start_consoles(self) -> None:
        duts = [d for d in self.c.duts if d.console]
        if not duts:
            return
        from diehardlab.watchdog.console import ConsoleCapture

        for d in duts:
            con = ConsoleCapture(
                d.name, d.console or "", d.console_baud, self.c.server.log_dir / "console", self.journal
            )
            con.start()
            self.consoles.append(con)


def serve(
    path: str | Path, duration_s: float | None = None, reset: list[str] | None = None, dashboard: str | None = None
) -> int:
    c = load_campaign(path)
    return asyncio.run(Server(c, str(path), reset, dashboard).run(duration_s))
