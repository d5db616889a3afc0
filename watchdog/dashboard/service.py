"""Starts and stops a dashboard: the web site, the tick that pushes DUT states, the analysis feed.

Everything runs as tasks of the event loop it is started on (the campaign server's, for
``diehard serve --dashboard``), each guarded: an exception in the dashboard is printed on one line and that
task starts again, the supervisors never see it. File reads that may be long (walking the log folders,
the first read of a long journal) run on the dashboard's own single worker thread, never on the executor
the supervisors use for switch and SSH calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from diehardlab.watchdog.dashboard.groups import GroupsFeed
from diehardlab.watchdog.dashboard.hub import Hub, sse
from diehardlab.watchdog.dashboard.state import FileSource, JournalTail, LiveSource

from diehardlab import __version__
from diehardlab.campaign import CampaignFile
from diehardlab.config import read_secrets
from diehardlab.errors import ConfigError

TICK_S = 0.5  # DUT rows are pushed at most this often (when they changed)
HEARTBEAT_S = 5.0  # and at least this often (the page knows its numbers are fresh)
JOURNAL_BYTES_PER_TICK = 256 << 10


def read_token(c: CampaignFile) -> str | None:
    name = c.dashboard.token_secret
    if name is None:
        return None
    if c.server.secrets_file is None:
        raise ConfigError(f"[dashboard] token_secret = {name!r} needs a secrets file: set [server] secrets_file")
    secrets = read_secrets(c.server.secrets_file)
    if name not in secrets:
        raise ConfigError(f"[dashboard] token_secret {name!r} is not in the secrets file {c.server.secrets_file}")
    return secrets[name]


class Dashboard:
    """One dashboard: built first (a bad address or a missing token is a ConfigError before anything runs),
    then :meth:`start` on the loop that serves it, :meth:`close` when that loop's server stops."""

    def __init__(
        self,
        campaign: CampaignFile,
        campaign_path: str | Path,
        bind: str,
        logs: list[Path],
        server: Any = None,
        status: Path | None = None,
        flux: list[Path] | None = None,
    ):
        """``server``: the running Server (live mode); else ``status`` is its status file (files mode).
        ``logs``: the folders the analysis reads; ``flux``: facility logs instead of the campaign's."""
        from diehardlab.watchdog.dashboard.web import Guard, parse_bind

        if not str(campaign_path):
            raise ValueError("the dashboard needs the campaign file's path: its analysis worker reads the file")
        self.c = campaign
        self.path = Path(campaign_path).resolve()
        self.bind = parse_bind(bind, "--dashboard" if server is not None else "--bind")
        self.guard = Guard(self.bind, read_token(campaign))
        self.journal = JournalTail(campaign.server.journal)
        if server is not None:
            self.source: LiveSource | FileSource = LiveSource(server)
        else:
            if status is None:
                raise ValueError("a dashboard without a live server reads the server's status file: give status")
            self.source = FileSource(campaign, status, self.journal)
        self.hub = Hub(campaign.dashboard.max_clients)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard")
        flux = list(flux or [])
        facility = flux or (list(campaign.facility.flux_logs) if campaign.facility else [])
        self.groups = GroupsFeed(
            self.path, list(logs), flux, facility, campaign.dashboard.target_relative_width,
            campaign.dashboard.refresh_s, campaign.dashboard.facility_stall_s, self._publish_groups, self.pool,
            self.source.in_progress,
        )  # fmt: skip
        self.duts_doc: dict[str, Any] = {}
        self.groups_doc: dict[str, Any] = self.groups.doc(watch=False)
        self.tasks: list[asyncio.Task] = []
        self.runner: Any = None
        self.url = ""
        self.port = 0
        self.complaints = 0
        self._unreadable_seen = 0

    # -- what the page gets -----------------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        c = self.c
        return {
            "campaign": c.campaign.name,
            "description": c.campaign.description,
            "mode": self.source.mode,
            "simulated": bool(c.facility is not None and c.facility.kind == "simulated"),
            "duts": [self._dut_info(d) for d in c.duts],
            "target_relative_width": c.dashboard.target_relative_width,
            "confidence": c.analysis.confidence,
            "one_sided": c.analysis.one_sided,
            "group_by": list(c.analysis.group_by),
            "refresh_s": c.dashboard.refresh_s,
            "status_interval_s": c.server.status_interval_s,
            "max_clients": c.dashboard.max_clients,
            "version": __version__,
        }

    @staticmethod
    def _dut_info(d: Any) -> dict[str, Any]:
        return {
            "name": d.name,
            "host": d.host,
            "transport": d.transport,
            "liveness_timeout_s": d.liveness_timeout_s,
            "benchmarks": [b.name for b in d.benchmarks],
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "hello": self.hello(),
            "duts": self.duts_doc,
            "journal": self.journal.snapshot(),
            "groups": self.groups_doc,
            "now": time.time(),
        }

    def health(self) -> dict[str, Any]:
        return {"clients": len(self.hub.clients), "max_clients": self.hub.max_clients, "now": time.time(),
                **{k: v for k, v in self.hub.counts.items()}}  # fmt: skip

    def _publish_groups(self, doc: dict[str, Any]) -> None:
        self.groups_doc = doc
        self.hub.publish(sse("groups", doc))

    def _first(self) -> list[bytes]:
        return [
            sse("hello", self.hello()),
            sse("duts", self.duts_doc),
            sse("journal-snapshot", self.journal.snapshot()),
            sse("groups", self.groups_doc),
        ]

    # -- the loop's tasks ------------------------------------------------------------------------------------

    def _complain(self, what: str, exc: BaseException) -> None:
        self.complaints += 1
        if self.complaints <= 20 or self.complaints % 100 == 0:
            print(f"dashboard: {what}: {type(exc).__name__}: {exc} (the watchdogs go on)", file=sys.stderr, flush=True)

    async def _guarded(self, what: str, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._complain(what, exc)
                await asyncio.sleep(5.0)

    def _journal_warnings(self) -> list[str]:
        out = []
        j = self.journal
        if j.error:
            out.append(j.error + ": the watchdog's timeline is unknown")
        if j.unreadable_total:
            lines = ", ".join(str(u["line"]) for u in j.unreadable)
            out.append(
                f"{j.unreadable_total} journal line(s) could not be read ({j.path}, line {lines}"
                f"{' ...' if j.unreadable_total > len(j.unreadable) else ''}): the timeline may miss those events"
            )
        return out

    async def _tick(self) -> None:
        last_body, last_pub = "", 0.0
        while True:
            new = self.journal.poll(JOURNAL_BYTES_PER_TICK)
            if new or self.journal.unreadable_total != self._unreadable_seen:
                self._unreadable_seen = self.journal.unreadable_total
                self.hub.publish(sse("journal", {"entries": new, "unreadable": self.journal.unreadable,
                                                 "unreadable_total": self.journal.unreadable_total}))  # fmt: skip
            rows, warnings = self.source.duts()
            doc = {
                "rows": rows,
                "warnings": warnings + self._journal_warnings(),
                "server": self.source.server_info(),
                "clients": len(self.hub.clients),
            }
            body = json.dumps(doc, sort_keys=True, allow_nan=False)
            mono = time.monotonic()
            if body != last_body or mono - last_pub >= HEARTBEAT_S:
                doc["now"] = time.time()
                self.duts_doc = doc
                self.hub.publish(sse("duts", doc))
                last_body, last_pub = body, mono
            await asyncio.sleep(TICK_S)

    async def _events(self, request: Any) -> Any:
        from aiohttp import web

        if self.hub.full():
            self.hub.counts["refused"] += 1
            return web.Response(
                status=503, headers={"Retry-After": "10"},
                text=f"{len(self.hub.clients)} dashboard pages are open (the limit, [dashboard] max_clients)\n",
            )  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})  # fmt: skip
        await resp.prepare(request)
        client = self.hub.add(request.remote or "?")
        await self.hub.stream(client, resp.write, self._first())
        return resp

    # -- start and stop --------------------------------------------------------------------------------------

    async def start(self) -> str:
        from aiohttp import web
        from diehardlab.watchdog.dashboard.web import make_app

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self.journal.poll, 1 << 40)  # a long journal: read once, off the loop
        self.duts_doc = {"rows": self.source.duts()[0], "warnings": [], "server": self.source.server_info(),
                         "clients": 0, "now": time.time()}  # fmt: skip
        page = (resources.files("diehardlab.watchdog.dashboard") / "static" / "index.html").read_bytes()
        app = make_app(self.guard, page, self._events, self.snapshot, self.health)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.bind.host, self.bind.port, backlog=256)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            where = f"{self.bind.host}:{self.bind.port}"
            raise ConfigError(f"cannot serve the dashboard on {where}: {exc.strerror or exc}") from None
        sockets = getattr(site._server, "sockets", None) or []  # the port the system chose for port 0
        self.port = sockets[0].getsockname()[1] if sockets else self.bind.port
        self.url = self.bind.url(self.port)
        self.tasks = [
            loop.create_task(self._guarded("pushing DUT states", self._tick), name="dashboard-tick"),
            loop.create_task(self._guarded("the analysis feed", self.groups.run), name="dashboard-groups"),
        ]
        return self.url

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.hub.close_all()
        await self.groups.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.pool.shutdown(wait=False)


def announce(d: Dashboard) -> str:
    how = " (sign in with the token of the secrets file)" if d.guard.token else ""
    return f"dashboard: {d.url}{how}"


def serve_dashboard(
    c: CampaignFile, path: str | Path, bind: str, logs: list[Path], status: Path, flux: list[Path] | None = None,
    duration_s: float | None = None,
) -> int:  # fmt: skip
    """``diehard dashboard FILE``: the page from the files a campaign server writes, until SIGINT/SIGTERM."""

    async def main() -> int:
        d = Dashboard(c, path, bind, logs, status=status, flux=flux)
        await d.start()
        print(announce(d), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration_s)
        finally:
            await d.close()
        return 0

    return asyncio.run(main())
