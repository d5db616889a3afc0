"""Server-sent events to every open page, without ever letting a page slow the server.

Each message is encoded once and put on every client's queue with ``put_nowait``; a queue is short
(``QUEUE_LEN`` messages). A client whose queue is full, or whose socket does not take a message within
``WRITE_TIMEOUT_S``, is dropped: its stream ends, and the browser's ``EventSource`` reconnects by itself and
gets a fresh full snapshot. Publishing therefore costs the same whether pages are fast, slow or gone, and
memory is bounded by ``max_clients x QUEUE_LEN`` messages.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

QUEUE_LEN = 16
WRITE_TIMEOUT_S = 10.0
KEEPALIVE_S = 15.0
RETRY_MS = 2000


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; the data is one line of JSON (NaN/inf are refused: they are not JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n".encode()


class Client:
    def __init__(self, peer: str):
        self.peer = peer
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_LEN)
        self.dropped = ""

    def drop(self, why: str) -> None:
        """End this client's stream at its next read (the queue is emptied, then closed with None)."""
        if self.dropped:
            return
        self.dropped = why
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub:
    def __init__(self, max_clients: int):
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        self.counts: Counter = Counter()  # connected, refused, dropped-slow, dropped-write, disconnected

    def full(self) -> bool:
        return len(self.clients) >= self.max_clients

    def add(self, peer: str) -> Client:
        c = Client(peer)
        self.clients.add(c)
        self.counts["connected"] += 1
        return c

    def remove(self, c: Client) -> None:
        self.clients.discard(c)

    def publish(self, message: bytes) -> None:
        for c in list(self.clients):
            if c.dropped:
                continue
            try:
                c.queue.put_nowait(message)
            except asyncio.QueueFull:
                self.counts["dropped-slow"] += 1
                c.drop("slow: its queue was full")

    def close_all(self) -> None:
        for c in list(self.clients):
            c.drop("the dashboard is stopping")

    async def stream(self, c: Client, write, first: list[bytes]) -> None:
        """Send ``first`` (the snapshot), then whatever is published, until the client goes or is dropped.
        ``write`` is the response's coroutine function; every write has a deadline."""
        try:
            for m in [f"retry: {RETRY_MS}\n\n".encode(), *first]:
                await asyncio.wait_for(write(m), WRITE_TIMEOUT_S)
            while True:
                try:
                    m = await asyncio.wait_for(c.queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    m = b": keepalive\n\n"  # also how a vanished client is noticed on a quiet campaign
                if m is None:
                    return
                await asyncio.wait_for(write(m), WRITE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.counts["dropped-write"] += 1
            c.drop("slow: a write did not finish in time")
        except (ConnectionError, RuntimeError):  # the browser went away mid-stream (RuntimeError: closed transport)
            self.counts["disconnected"] += 1
        finally:
            self.remove(c)
