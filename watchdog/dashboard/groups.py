"""Per-configuration numbers for the page: the analysis, run in a worker process on the growing files.

The server never imports the analysis (pandas, scipy): it starts ``python -m diehardlab.analysis.live``
once, with a lowered priority, and sends it a request whenever the logs or the facility log changed, at most
every ``[dashboard] refresh_s``. The worker answers with what ``diehard fit`` computes on the same files plus
the beam time still needed (:mod:`diehardlab.analysis.planning`). A worker that dies or hangs is started again
with a growing pause; the page shows its last answer and says how old it is and why there is no newer one.

The facility logs named by the campaign (or ``--flux``) are watched here too: one that has not grown for
``[dashboard] facility_stall_s`` is flagged ("fluence after its last row is unknown").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

WORKER_MODULE = "diehardlab.analysis.live"
ANSWER_LIMIT = 64 << 20  # bytes of one answer line
MIN_TIMEOUT_S = 120.0


def log_signature(dirs: list[Path], flux: list[Path]) -> tuple:
    """What the analysis reads, as (path, size, mtime) triples: a change means the numbers may have changed."""
    sig = []
    for d in dirs:
        if not d.is_dir():
            continue
        for root, _, files in os.walk(d):
            for name in files:
                if name.endswith((".log", ".chipir.txt", ".truth.json")):
                    p = os.path.join(root, name)
                    with contextlib.suppress(OSError):
                        st = os.stat(p)
                        sig.append((p, st.st_size, st.st_mtime_ns))
    for f in flux:
        with contextlib.suppress(OSError):
            st = os.stat(f)
            sig.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(sorted(sig))


class FacilityWatch:
    """When each facility log last grew, from its size (what a user means by "the log stopped growing")."""

    def __init__(self, paths: list[Path], stall_s: float):
        self.paths = paths
        self.stall_s = stall_s
        self.size: dict[Path, int] = {}
        self.grew: dict[Path, float] = {}  # wall time of the last growth (the file's mtime at first sight)

    def check(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        out = []
        for p in self.paths:
            try:
                st = os.stat(p)
            except OSError as exc:
                out.append({"path": str(p), "exists": False, "error": f"{p}: {exc.strerror or exc}"})
                continue
            if p not in self.size:
                self.grew[p] = st.st_mtime
            elif st.st_size != self.size[p]:
                self.grew[p] = now
            self.size[p] = st.st_size
            quiet = now - self.grew[p]
            out.append({"path": str(p), "exists": True, "size": st.st_size, "quiet_s": round(quiet, 1),
                        "stalled": quiet > self.stall_s})  # fmt: skip
        return out


class GroupsFeed:
    """Keeps one analysis worker busy with the campaign's files; hands each answer to ``publish``."""

    def __init__(
        self,
        campaign_path: Path,
        logs: list[Path],
        flux: list[Path],
        facility: list[Path],
        target: float,
        refresh_s: float,
        stall_s: float,
        publish: Callable[[dict[str, Any]], None],
        pool: Executor,
        in_progress: Callable[[], list[str]] = list,
    ):
        self.campaign_path = campaign_path
        self.logs = logs
        self.flux = flux
        self.target = target
        self.refresh_s = refresh_s
        self.publish = publish
        self.pool = pool
        self.in_progress = in_progress
        self.watch = FacilityWatch(facility, stall_s)
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.last: dict[str, Any] | None = None  # the last answer the worker gave (ok or not)
        self.last_ok: dict[str, Any] | None = None
        self.status = "starting the analysis worker"
        self.failures = 0
        self._signature: tuple | None = None

    def request(self) -> dict[str, Any]:
        return {
            "campaign": str(self.campaign_path),
            "logs": [str(p) for p in self.logs if p.is_dir()],  # a local DUT's folder appears at its first run
            "flux": [str(p) for p in self.flux],
            "target": self.target,
            "in_progress": self.in_progress(),
        }

    def doc(self, watch: bool = True) -> dict[str, Any]:
        """What the page gets: the last good numbers, how old they are, and why there are no newer ones."""
        return {
            "status": self.status,
            "answer": self.last_ok,
            "error": None if self.last is None or self.last.get("ok") else self.last.get("error"),
            "facility_watch": self.watch.check() if watch else [],
            "worker_stderr": list(self.stderr_tail)[-5:] if self.failures else [],
        }

    async def _start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", WORKER_MODULE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=ANSWER_LIMIT, env=env, start_new_session=True,
        )  # fmt: skip
        asyncio.get_running_loop().create_task(self._drain(self.proc))

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        with contextlib.suppress(Exception):
            async for line in proc.stderr:
                self.stderr_tail.append(line.decode("utf-8", "replace").rstrip()[:300])

    async def _ask(self) -> dict[str, Any]:
        if self.proc is None or self.proc.returncode is not None:
            await self._start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        req = await asyncio.get_running_loop().run_in_executor(self.pool, self.request)  # stats files: off the loop
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=max(MIN_TIMEOUT_S, 10 * self.refresh_s))
        if not line:
            raise RuntimeError(f"the analysis worker exited (code {await self.proc.wait()})")
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise RuntimeError("the analysis worker answered something that is not a JSON object")
        return doc

    async def run(self) -> None:
        """Forever: when the files changed, ask the worker; publish what it says; pause ``refresh_s``."""
        loop = asyncio.get_running_loop()
        while True:
            began = time.monotonic()
            sig = await loop.run_in_executor(self.pool, log_signature, self.logs, self.flux)
            if not any(p.is_dir() for p in self.logs):
                # Nothing to analyse before the first run: no worker process yet.
                self.status = "no logs yet (" + ", ".join(str(p) for p in self.logs) + "): the first run writes them"
            elif sig != self._signature:
                if self.last_ok is None:
                    self.status = "computing the first numbers (the analysis worker starts: a few seconds)"
                    self.publish(self.doc())
                try:
                    answer = await self._ask()
                    answer["computed_at"] = time.time()
                    self.last = answer
                    if answer.get("ok"):
                        self.last_ok = answer
                        self._signature = sig
                    self.status = "ok" if answer.get("ok") else "the analysis could not run on these files"
                    self.failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failures += 1
                    self.status = f"the analysis worker failed ({type(exc).__name__}: {exc}); trying again"
                    self.last = {"ok": False, "error": self.status}
                    await self.stop()
                    await asyncio.sleep(min(300.0, self.refresh_s * 2 ** min(self.failures, 5)))
            self.publish(self.doc())
            await asyncio.sleep(max(0.0, self.refresh_s - (time.monotonic() - began)))

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=2)
        except (asyncio.TimeoutError, Exception):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), timeout=5)
