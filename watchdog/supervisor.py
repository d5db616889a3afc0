"""One DUT's software and hardware watchdog: an asyncio task with its own state machine.

States: off -> booting -> ready -> running (a benchmark) -> recovering (app restart | OS reboot | power cycle)
-> cool-down -> broken. Escalation, in order, with the DUT's limits (``[escalation]`` or ``[dut.escalation]``):
restart the benchmark ``max_app_restarts`` times, soft-reboot the OS ``max_os_reboots`` times (only when the
host still answers), power-cycle through the switch ``max_power_cycles`` times, then a cool-down (power off for
``cool_down_s``) at most ``max_cool_downs`` times, then the DUT is marked broken. All these counters go back
to zero as soon as the benchmark makes progress again (an ``#IT`` line).

Blocking work (SSH, HTTP switch calls) runs in worker threads with timeouts, so a dead switch or a hung
connection delays only this DUT, never the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diehardlab.watchdog.journal import Journal
from diehardlab.watchdog.servercopy import ServerCopy, benchmark_ended
from diehardlab.watchdog.storage import Storage
from diehardlab.watchdog.switches.base import Driver, SwitchError

from diehardlab.campaign import Benchmark, Dut, Escalation
from diehardlab.errors import DiehardError
from diehardlab.formats.filename import format_log_name, parse_log_name

PLACEHOLDER = re.compile(
    r"\{(server_host|server_port|dut|hostname|benchmark|log_dir|run_dir|ecc|key_file|campaign_dir|python)\}"
)


def substitute(argv: list[str], values: dict[str, str]) -> list[str]:
    """Replace the known ``{name}`` placeholders; any other braces are left as they are."""
    return [PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in argv]


@dataclass
class Snap:
    """What the journal stores of a DUT, and what a restarted server resumes from."""

    state: str = "off"
    bench: int = 0  # index into the DUT's benchmarks (rotation position)
    window_used_s: float = 0.0  # running time of the current benchmark in its rotation window
    app_restarts: int = 0  # consecutive, since the last progress
    os_reboots: int = 0
    power_cycles: int = 0
    cool_downs: int = 0
    total_app_restarts: int = 0
    total_os_reboots: int = 0
    total_power_cycles: int = 0
    sdc: int = 0
    due: int = 0
    last_iteration: int = -1
    broken: bool = False
    copy: str = ""  # the server copy open now (file name in log_dir): a restarted server closes what a dead one left

    @classmethod
    def problem(cls, d: dict[str, Any]) -> str | None:
        """Why ``d`` (a journal's or status file's snapshot) is not one: the first field of the wrong type."""
        for k, f in cls.__dataclass_fields__.items():
            if k not in d:
                continue
            v, kind = d[k], type(f.default)
            ok = isinstance(v, kind) if kind is not float else isinstance(v, int | float) and math.isfinite(v)
            if not ok or (kind is int and isinstance(v, bool)):
                return f"{k} = {str(v)[:40]!r} is not {'a number' if kind is float else kind.__name__}"
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snap:
        """The snapshot in ``d`` (unknown keys ignored); ValueError naming the first mistyped field."""
        why = cls.problem(d)
        if why is not None:
            raise ValueError(why)
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ControlError(DiehardError):
    """The DUT's control channel (SSH) fails while its host still answers the probe."""


def _control_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ControlError, asyncio.TimeoutError]
    try:
        from diehardlab.watchdog.transport.ssh import SshError

        errors.append(SshError)
    except ImportError:  # no paramiko on this server: local transport only
        pass
    return tuple(errors)


CONTROL_ERRORS = _control_errors()


class Broken(Exception):
    """The DUT has exhausted its escalation: it stays off until an operator looks at it."""


class StartFailed(Exception):
    """The benchmark could not be started (its binary is missing, not executable...): a crash at start."""


@dataclass
class Context:
    """What every supervisor shares with the server."""

    journal: Journal
    log_dir: Path
    server_host: str
    server_port: int
    poll_s: float = 1.0
    campaign_dir: Path = Path(".")
    notify: Any = None  # diehardlab.watchdog.notify.Notifier | None
    storage: Storage | None = None  # failed writes (full disk): reported once, retried (the journal's by default)

    def __post_init__(self) -> None:
        if self.storage is None:
            self.storage = self.journal.storage


class Supervisor:
    def __init__(
        self,
        dut: Dut,
        escalation: Escalation,
        transport: Any,
        switch: Driver | None,
        ctx: Context,
        snap: Snap | None = None,
        key_file: Path | None = None,
    ):
        self.dut = dut
        self.esc = escalation
        self.transport = transport
        self.switch = switch
        self.ctx = ctx
        self.snap = snap or Snap()
        self.key_file = key_file
        self.last_heard = time.monotonic()
        self.heard_since_start = False  # until the first datagram of a run, the benchmark's start timeout applies
        self.last_heard_wall: float | None = None
        self.datagrams = 0
        self.copy: ServerCopy | None = None
        self._ended = False  # the benchmark wrote #END (or #ABORT): its exit is not a crash
        self._accepting = False  # lines are copied only while a benchmark runs
        self.pulled_dir = ctx.log_dir / "pulled" / dut.name
        self.stopping = False  # set by the server at shutdown: leave the loop at the next step
        self.ecc_seen: bool | None = None  # the ECC flag of the DUT's datagrams (for ecc = "auto")
        self.resumed = snap is not None  # a restarted server: settle what the previous one left first
        self.last_error: str | None = None  # the last start failure, for the status file and 'diehard status'
        self._refused_logfile = False  # a #LOGFILE name refused in this run (journaled once per run)

    # -- journal ---------------------------------------------------------------------------------------------

    @property
    def bench(self) -> Benchmark:
        return self.dut.benchmarks[self.snap.bench % len(self.dut.benchmarks)]

    def _set_state(self, state: str) -> None:
        self.snap.state = state

    def log(self, event: str, **fields: Any) -> None:
        self.ctx.journal.write(event, self.dut.name, benchmark=self.bench.name, snap=asdict(self.snap), **fields)

    def _notify(self, event: str, **fields: Any) -> None:
        if self.ctx.notify is not None and event in self.ctx.notify.events:
            self.ctx.notify.send(event, self.dut.name, **fields)

    # -- datagrams -------------------------------------------------------------------------------------------

    def on_datagram(self, line: str | None, ecc: bool | None = None) -> None:
        if ecc is not None:
            self.ecc_seen = ecc
        self.last_heard = time.monotonic()
        self.last_heard_wall = time.time()
        self.heard_since_start = True
        self.datagrams += 1
        if line is None or not self._accepting:
            return
        if line.startswith("#LOGFILE "):
            dut_path = line[len("#LOGFILE ") :].strip()
            if self.copy is not None and not self.copy.lines:
                # the copy opened at start takes the DUT's name (when it is one of this DUT's)
                name = self._dut_log_name(dut_path)
                if name is not None and self.copy.rename(name, dut_path):
                    self.snap.copy = self.copy.path.name
                    self.log("copy-named", copy=self.snap.copy)
                return
            if self.copy is not None:
                self.copy.close("broken", "unknown")  # a new run began without the old one ending: #SERVER_UNKNOWN
                self.copy = None
            self._open_copy(dut_path)
            return
        if self.copy is None:
            self._open_copy(None)
        assert self.copy is not None
        self.copy.line(line)
        marker = line.split(" ", 1)[0].rstrip("\n")
        if marker == "#IT":
            self._progress(line)
        elif marker == "#SDC":
            self.snap.sdc += 1
        elif marker in ("#END", "#ABORT"):
            self._ended = True

    def _progress(self, line: str) -> None:
        parts = line.split()
        with contextlib.suppress(IndexError, ValueError):
            self.snap.last_iteration = int(parts[1].removeprefix("Ite:"))
        if self.snap.app_restarts or self.snap.os_reboots or self.snap.power_cycles or self.snap.cool_downs:
            self.snap.app_restarts = self.snap.os_reboots = self.snap.power_cycles = self.snap.cool_downs = 0
            self.log("progress", iteration=self.snap.last_iteration)

    def _dut_log_name(self, dut_path: str | None) -> str | None:
        """The DUT's own log name from its ``#LOGFILE``, when that name carries this DUT's host field (None when
        it does not: journaled once per run). Host names are unique in a campaign, so a copy never takes the
        name of another DUT's: a forged or broken #LOGFILE stays in its own DUT's copies."""
        name = Path(dut_path).name if dut_path else ""
        parsed = parse_log_name(name) if name else None
        if parsed is not None and parsed.hostname == self.dut.hostname:
            return name
        if name and not self._refused_logfile:
            self._refused_logfile = True
            self.log(
                "logfile-refused", name=name[:200],
                why=f"not a log name of host {self.dut.hostname!r}; the copy keeps the server's name",
            )  # fmt: skip
        return None

    def _copy_name(self, dut_path: str | None) -> str:
        """The DUT's own log name when it told us and may have it, else libLogHelper's name in server UTC time."""
        name = self._dut_log_name(dut_path)
        if name is not None:
            return name
        ecc = self.dut.ecc == "on" if self.dut.ecc != "auto" else bool(self.ecc_seen)
        return format_log_name(datetime.now(timezone.utc).replace(tzinfo=None), self.bench.name, ecc, self.dut.hostname)

    def _open_copy(self, dut_path: str | None) -> None:
        name = self._copy_name(dut_path)
        header = {
            "dut": self.dut.name,
            "host": self.dut.host,
            "benchmark": self.bench.name,
            "argv": self.bench.header or " ".join(self.bench.argv),
            "dut_log": dut_path,
        }
        self.copy = ServerCopy(self.ctx.log_dir, name, header, self.ctx.storage)
        self.snap.copy = self.copy.path.name

    def _close_copy(self, action: str | None = None, cause: str | None = None) -> None:
        if self.copy is not None:
            self.copy.close(action, cause)
            self.copy = None
        self.snap.copy = ""

    # -- the loop --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.resumed:
            self.resumed = False  # once: a supervisor restarted after an error has nothing left to settle
            await self._settle_leftover()
        if self.snap.broken:
            self._set_state("broken")
            return
        while not self.stopping:
            try:
                await self._ensure_host()
                try:
                    await self._start()
                    outcome = await self._watch()
                except StartFailed:
                    outcome = "start-failed"  # as a benchmark that dies at once: the escalation decides
                except CONTROL_ERRORS as exc:
                    # The host answers the probe but cannot be controlled (SSH refused, wedged or timing
                    # out): the same as a host that does not answer, and a soft reboot needs SSH too.
                    self.log("control-error", error=str(exc)[:300] or type(exc).__name__)
                    outcome = "os-hang"
                if outcome == "rotate":
                    await self._stop("rotation")
                    self.snap.bench = (self.snap.bench + 1) % len(self.dut.benchmarks)
                    self.snap.window_used_s = 0.0
                    self.log("rotate", next=self.bench.name)
                elif outcome == "ended":
                    self._accepting = False
                    self._close_copy()
                    self.log("benchmark-stop", reason="ended")
                    await self._pull()
                else:
                    await self._recover(outcome)
            except Broken:
                self._set_state("broken")
                return

    async def _ensure_host(self) -> None:
        while not await self.transport.reachable():
            self._set_state("booting")
            self.log("booting")
            if await self.transport.wait_up(self.dut.boot_timeout_s):
                break
            await self._recover("os-hang", detected=True)
        self._set_state("ready")

    def argv_values(self) -> dict[str, str]:
        return {
            "server_host": self.ctx.server_host,
            "server_port": str(self.ctx.server_port),
            "dut": self.dut.name,
            "hostname": self.dut.hostname,
            "benchmark": self.bench.name,
            "log_dir": str(self.transport.log_dir),
            "run_dir": str(self.transport.run_dir),
            "ecc": self.dut.ecc,
            "key_file": str(self.key_file) if self.key_file else "",
            "campaign_dir": str(self.ctx.campaign_dir),
            "python": sys.executable,
        }

    async def _settle_leftover(self) -> None:
        """The previous server died (SIGKILL, a crash, power loss) without stopping this DUT's benchmark or
        closing its copy. Stop the benchmark with its grace period (it closes its own log), and close the copy
        with the reason, so that the analysis counts no DUE that only the server's death made."""
        name = self.snap.copy
        if not name and self.snap.state != "running":
            return
        running: bool | None = None
        try:
            if await self.transport.reachable():
                running = await self.transport.is_running()
                if running:
                    self.log("leftover-stop", grace_s=self.dut.stop_grace_s)
                    await self.transport.stop(self.dut.stop_grace_s)
        except CONTROL_ERRORS as exc:
            self.log("control-error", error=str(exc)[:300] or type(exc).__name__)
        if name:
            copy = ServerCopy.reopen(self.ctx.log_dir / Path(name).name, self.ctx.storage)
            if copy is not None:
                ended = bool(running) or benchmark_ended(copy.path)
                what = {True: "was still running and was stopped", False: "had exited", None: "could not be asked"}
                copy.close_leftover(f"server-restart (the previous server died; the benchmark {what[running]})", ended)
            self.log("leftover-closed", copy=name, benchmark_running=running)
        self.snap.copy = ""
        self._set_state("off")
        await self._pull()

    async def _start(self) -> None:
        argv = substitute(self.bench.argv, self.argv_values())
        self._ended = False
        self._refused_logfile = False
        self._close_copy(None)
        self._accepting = True
        try:
            pid = await self.transport.start(self.bench.name, argv)
        except OSError as exc:  # local transport: the binary is missing or not executable, its folder is full
            # No run began: no copy, no DUE for the analysis; the escalation still acts and the operator is told.
            self._accepting = False
            self.last_error = f"{argv[0]}: {exc.strerror or exc}"
            self.log("start-failed", error=self.last_error[:300], argv=argv)
            raise StartFailed(self.last_error) from exc
        # The copy exists from the start, so a run that dies before its first line still leaves its DUE record
        # (unless the benchmark's #LOGFILE came first, while the start command was still answering).
        if self.copy is None:
            self._open_copy(None)
        self.last_heard = time.monotonic()
        self.heard_since_start = False
        self._set_state("running")
        self.log("benchmark-start", pid=pid, argv=argv)

    async def _watch(self) -> str:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.ctx.poll_s)
            if self.stopping:
                raise asyncio.CancelledError
            now = time.monotonic()
            self.snap.window_used_s += now - last
            last = now
            if len(self.dut.benchmarks) > 1 and self.snap.window_used_s >= self.bench.window_s:
                return "rotate"
            running = await self.transport.is_running()
            if running is False:
                return "ended" if self._ended else "app-crash"
            if time.monotonic() - self.last_heard <= self.silence_allowed():
                continue  # datagrams are flowing: a failed status query alone is no reason to act
            if not await self.transport.reachable():
                return "os-hang"
            if running is None:
                raise ControlError("silent, and the benchmark's state cannot be read over the control channel")
            return "app-hang"

    def silence_allowed(self) -> float:
        """Seconds of silence before the benchmark counts as hung: longer until its first datagram."""
        start = self.bench.start_timeout_s
        if not self.heard_since_start and start is not None:
            return max(start, self.dut.liveness_timeout_s)
        return self.dut.liveness_timeout_s

    async def _stop(self, reason: str) -> None:
        self._accepting = False
        await self.transport.stop(self.dut.stop_grace_s)
        self._close_copy(None)
        if reason == "server-stop":
            self._set_state("off")  # what the journal's last snapshot and the final status file say
        self.log("benchmark-stop", reason=reason)
        await self._pull()

    async def stop_for_shutdown(self) -> None:
        """SIGINT/SIGTERM of the server: stop the benchmark on the DUT (never leave it running unwatched)."""
        if self.snap.state == "running":
            try:
                await asyncio.wait_for(self._stop("server-stop"), timeout=self.dut.stop_grace_s + 30)
            except Exception as exc:  # the server stops anyway; say what was left behind
                self.log("stop-failed", error=repr(exc))
        self._close_copy(None)

    async def _pull(self) -> None:
        if not await self.transport.reachable():
            return
        try:
            got = await asyncio.wait_for(self.transport.pull_logs(self.pulled_dir), timeout=120)
        except Exception as exc:
            self.log("pull-failed", error=repr(exc))
            return
        if got:
            self.log("log-pulled", files=[str(p) for p in got])

    # -- escalation ------------------------------------------------------------------------------------------

    async def _next_action(self, cause: str) -> str:
        s, e = self.snap, self.esc
        if cause in ("app-crash", "app-hang", "start-failed") and s.app_restarts < e.max_app_restarts:
            return "app-restart"
        if s.os_reboots < e.max_os_reboots and await self.transport.reachable():
            return "os-reboot"
        if self.switch is None:
            return "broken"
        if s.power_cycles < e.max_power_cycles:
            return "power-cycle"
        if s.cool_downs < e.max_cool_downs:
            return "cool-down"
        return "broken"

    async def _recover(self, cause: str, detected: bool = False) -> None:
        """Act on a failure until the host is back (the main loop then restarts the benchmark)."""
        self._accepting = False
        event = "crash-detected" if cause in ("app-crash", "start-failed") else "hang-detected"
        if cause != "start-failed":  # no run began: nothing for the cross section to count
            self.snap.due += 1
        self._set_state("recovering")
        self.log(event, cause=cause, silent_s=round(time.monotonic() - self.last_heard, 3))
        while True:
            action = await self._next_action(cause)
            self._close_copy(action, cause)
            if action == "app-restart":
                self.snap.app_restarts += 1
                self.snap.total_app_restarts += 1
                self.log("app-restart", cause=cause)
                try:
                    await self.transport.stop(0.0 if cause == "app-hang" else self.dut.stop_grace_s)
                except CONTROL_ERRORS as exc:
                    self.log("control-error", error=str(exc)[:300] or type(exc).__name__)
                    cause = "os-hang"
                    continue
                await self._pull()
                return
            if action == "os-reboot":
                self.snap.os_reboots += 1
                self.snap.total_os_reboots += 1
                self.log("os-reboot", cause=cause)
                try:
                    await self.transport.reboot()
                except Exception as exc:
                    self.log("os-reboot-failed", error=repr(exc))
                if await self._wait_up():
                    await self._pull()
                    return
                cause = "os-hang"
                continue
            if action == "power-cycle":
                self.snap.power_cycles += 1
                self.snap.total_power_cycles += 1
                self.log("power-cycle", cause=cause, switch=self.dut.switch, outlet=self.dut.outlet)
                self._notify("power-cycle", cause=cause)
                await self._power_off_for(self.esc.power_off_s)
                if await self._wait_up():
                    await self._pull()
                    return
                cause = "os-hang"
                continue
            if action == "cool-down":
                self.snap.cool_downs += 1
                self._set_state("cool-down")
                self.log("cool-down", cause=cause, seconds=self.esc.cool_down_s)
                self._notify("cool-down", cause=cause, seconds=self.esc.cool_down_s)
                await self._power_off_for(self.esc.cool_down_s)
                self._set_state("recovering")
                if await self._wait_up():
                    await self._pull()  # as after any power cycle: the DUT's own log of the lost run
                    return
                cause = "os-hang"
                continue
            # broken
            self.snap.broken = True
            self._set_state("broken")
            try:
                await asyncio.wait_for(self.transport.stop(0.0), timeout=30)
            except Exception as exc:
                self.log("stop-failed", error=repr(exc))
            self.log("broken", cause=cause)
            self._notify("broken", cause=cause)
            raise Broken(self.dut.name)

    async def _wait_up(self) -> bool:
        self._set_state("booting")
        up = await self.transport.wait_up(self.dut.boot_timeout_s)
        self._set_state("recovering")
        return up

    async def _power_off_for(self, seconds: float) -> None:
        """Outlet off, ``seconds`` without power (a power cycle, a cool-down), outlet on."""
        await self._power(False)
        await asyncio.sleep(seconds)
        await self._power(True)

    async def _power(self, on: bool) -> None:
        """Switch the DUT's outlet; a switch that fails is journaled and the escalation goes on."""
        assert self.switch is not None and self.dut.outlet is not None
        if not on:
            self.transport.power_lost()
        deadline = self.switch.timeout_s * 3 + self.switch.settle_s + 5
        try:
            await asyncio.wait_for(asyncio.to_thread(self.switch.set, self.dut.outlet, on), timeout=deadline)
            self.log("power-on" if on else "power-off", switch=self.switch.name, outlet=self.dut.outlet)
        except (SwitchError, asyncio.TimeoutError, OSError) as exc:
            msg = str(exc) or f"no answer within {deadline:g} s"
            self.log("switch-error", switch=self.switch.name, outlet=self.dut.outlet, on=on, error=msg)
        if on:
            self.transport.power_restored()
