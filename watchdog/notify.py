"""Notification webhook: a JSON POST on power cycles, cool-downs and broken DUTs.

Sent from a worker thread with the configured timeout, fire-and-forget: a slow or dead webhook is journaled
as ``notify-failed`` and never delays a watchdog.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

from diehardlab.watchdog.journal import Journal, utc_now_iso

from diehardlab.campaign import Notify


class Notifier:
    def __init__(self, cfg: Notify, campaign: str, journal: Journal):
        self.cfg = cfg
        self.events = set(cfg.events)
        self.campaign = campaign
        self.journal = journal
        self._tasks: set[asyncio.Task] = set()

    def _post(self, body: dict[str, Any]) -> None:
        req = urllib.request.Request(
            self.cfg.webhook_url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:
            r.read(1024)

    def send(self, event: str, dut: str, **fields: Any) -> None:
        body = {"campaign": self.campaign, "event": event, "dut": dut, "time": utc_now_iso(), **fields}
        task = asyncio.get_running_loop().create_task(self._send(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, body: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._post, body), timeout=self.cfg.timeout_s + 1)
            self.journal.write("notified", body["dut"], what=body["event"])
        except Exception as exc:
            self.journal.write("notify-failed", body["dut"], what=body["event"], error=repr(exc)[:300])
