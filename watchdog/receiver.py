"""The UDP receiver: every DUT's datagrams on one socket, verified, then handed to that DUT's supervisor.

Extended datagrams name their DUT and are checked by the foundation's
:class:`~diehardlab.formats.datagram.DatagramVerifier` (MAC, replay, freshness); they must be signed, so a DUT
without a key cannot be named by anyone (``unsigned``). Legacy datagrams carry no name: they belong to the DUT
whose address they come from (``source_ip``, else the resolved ``host``), and only when that DUT is configured
for the legacy form (a keyed DUT's address must not let forgeries in). Everything rejected is counted by reason.

Replays across a restart: :class:`ReplayFloors` keeps, in ``<journal stem>.replay.json``, a send time per DUT
at or above the newest datagram this server accepted. It is written ahead, a short lease at a time, before a
datagram newer than the lease is handed on, so even a server killed with SIGKILL leaves a file that covers every
datagram it acted on; the next server refuses anything sent at or before it. The cost: after a crash, a DUT's
datagrams are refused for at most the lease (1 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from diehardlab.watchdog.storage import Storage

from diehardlab.formats.datagram import DatagramError, DatagramVerifier

LEASE_MS = 1000


class ReplayFloors:
    def __init__(self, path: Path, storage: Storage, window_s: float = 30.0):
        self.path = path
        self.storage = storage
        self.window_s = window_s  # the verifier's freshness window: no accepted datagram was sent later than that
        self.loaded: dict[str, int] = {}
        self.leases: dict[str, int] = {}
        self.note = ""  # what load() found, for the journal

    def load(self, duts: list[str]) -> dict[str, int]:
        """The floors a previous server left (for the DUTs of this campaign)."""
        now = int(time.time() * 1000)
        latest = now + self.window_s * 1000 + LEASE_MS  # the newest floor an earlier server can have written
        try:
            doc = json.loads(self.path.read_bytes())
            floors = doc["floors_ms"]
            self.loaded = {}
            for d in duts:
                v = floors.get(d)
                if v is None:
                    continue
                # NaN, infinity or a time far ahead would refuse the DUT's datagrams forever: the file is damaged
                if isinstance(v, bool) or not isinstance(v, int | float) or not -1 <= v <= latest:
                    raise ValueError(f"the floor of {d} is {str(v)[:30]}, not a time this server can have accepted")
                self.loaded[d] = int(v)
        except FileNotFoundError:
            self.loaded = {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Unreadable: fence every DUT at the server's clock now (DUT clocks that run late lose a few seconds).
            self.loaded = dict.fromkeys(duts, now + LEASE_MS)
            self.note = f"{self.path}: unreadable ({exc}); every DUT fenced at the server's clock"
        self.leases = dict(self.loaded)
        return dict(self.loaded)

    def covers(self, dut: str, sent_ms: int) -> bool:
        return sent_ms <= self.leases.get(dut, -1)

    def extend(self, newest: dict[str, int]) -> None:
        """Renew the lease of every DUT that sent something, in one write (about one write per lease)."""
        for dut, ms in newest.items():
            self.leases[dut] = max(self.leases.get(dut, -1), ms + LEASE_MS)
        self._save(self.leases)

    def close(self, newest: dict[str, int]) -> None:
        """A clean stop: the exact floors (nothing was accepted after them)."""
        floors = dict(self.loaded)
        for dut, ms in newest.items():
            floors[dut] = max(floors.get(dut, -1), ms)
        self._save(floors)

    def _save(self, floors: dict[str, int]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"floors_ms": floors, "written_ms": int(time.time() * 1000)}).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk: the lease holds in memory; a crash now may let old replays in
            self.storage.failed(self.path, exc)


class Receiver(asyncio.DatagramProtocol):
    def __init__(
        self,
        verifier: DatagramVerifier,
        by_name: dict[str, Any],
        legacy_by_ip: dict[str, list[Any]],
        floors: ReplayFloors | None = None,
    ):
        self.verifier = verifier
        self.by_name = by_name
        self.legacy_by_ip = legacy_by_ip
        self.floors = floors
        self.rejected: Counter = Counter()
        self.received = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        try:
            dg = self.verifier.verify(data)
        except DatagramError as exc:
            self.rejected[exc.reason] += 1
            return
        if dg.extended:
            sup = self.by_name.get(dg.dut or "")
            if sup is None:
                self.rejected["unknown-dut"] += 1
                return
            if self.floors is not None and not self.floors.covers(str(dg.dut), int(dg.sent_ms or 0)):
                self.floors.extend(self.verifier.newest_ms)  # written before the datagram has any effect
        else:
            sups = self.legacy_by_ip.get(addr[0], [])
            if len(sups) != 1:
                self.rejected["unknown-source" if not sups else "ambiguous-source"] += 1
                return
            sup = sups[0]
        sup.on_datagram(dg.line, dg.ecc)


def resolve(host: str) -> str | None:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None
