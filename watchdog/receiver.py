"""The UDP receiver: every DUT's datagrams on one socket, verified, then handed to that DUT's supervisor.

Extended datagrams name their DUT and are checked by the foundation's
:class:`~diehardlab.formats.datagram.DatagramVerifier` (MAC, replay, freshness). Legacy datagrams carry no
name: they belong to the DUT whose address they come from (``source_ip``, else the resolved ``host``), and
only when that DUT is configured for the legacy form (a keyed DUT's address must not let forgeries in).
Everything rejected is counted by reason.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

from diehardlab.formats.datagram import DatagramError, DatagramVerifier


class Receiver(asyncio.DatagramProtocol):
    def __init__(self, verifier: DatagramVerifier, by_name: dict[str, Any], legacy_by_ip: dict[str, list[Any]]):
        self.verifier = verifier
        self.by_name = by_name
        self.legacy_by_ip = legacy_by_ip
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
