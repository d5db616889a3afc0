"""The libLogHelper UDP stream: one datagram per log line, and our authenticated extended form.

Legacy form (libLogHelper ``file_writer.cpp``, read by radiation-setup): byte 0 is the ECC flag, 0x0E on
and 0x0D off, then the ASCII line with its newline; at most 1024 bytes. No sequence numbers, no
authentication: anyone on the subnet can forge one. (Some libLogHelper builds sent 0xEE/0xED with the
meaning swapped; we accept them with the ECC state reported as unknown.)

Extended form (ours), chosen per DUT in the campaign file. It is a legacy datagram whose line is an
``#INF`` record, so a legacy server appends it to its copy as an info line that every parser ignores
and nothing else changes::

    <ecc byte>#INF DHX1 <kind> <dut> <session> <seq> <time_ms> <payload> <mac>\n

    kind     L = one log line, T = a log line truncated to fit, H = heartbeat (payload "-")
    dut      the DUT's name in the campaign file, [A-Za-z0-9._-]{1,32}
    session  8 hex digits drawn at random when the sender starts (one per run of a benchmark)
    seq      decimal, 0 for the first datagram of a session, +1 for each after it
    time_ms  the sender's clock, UTC milliseconds since the epoch
    payload  the line (with its newline), base64
    mac      HMAC-SHA256 with the campaign's key over everything from ``#INF`` to the space before the mac,
             first 16 bytes in hex; ``-`` when the campaign sets no key for this DUT

The receiver (:class:`DatagramVerifier`) rejects, and counts by reason: malformed datagrams, unknown DUTs,
a wrong or missing MAC (``bad-mac``), an unsigned datagram for a DUT without a key (``unsigned``: the server
takes the extended form only signed; a keyless DUT speaks the legacy form, matched by its address), a replayed
(session, seq) pair or a datagram sent before a server restart (``replay``), a send time outside the freshness
window (``stale``, which also stops the replay of a whole old session), and a DUT opening sessions faster than
they expire (``too-many-sessions``). Its bookkeeping costs O(1) per datagram and is bounded per DUT, whatever
arrives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import socket
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from diehardlab.formats.filename import PLAIN_NAME

MAX_DATAGRAM = 1024
ECC_ON, ECC_OFF = 0x0E, 0x0D
_ECC_BYTES: dict[int, bool | None] = {ECC_ON: True, ECC_OFF: False, 0xEE: None, 0xED: None}
_TAG = b"#INF DHX1 "
_MAC_BYTES = 16
_DUT = re.compile(rf"^{PLAIN_NAME}$")
_EXT = re.compile(
    rb"^#INF DHX1 ([LTH]) (" + PLAIN_NAME.encode() + rb") ([0-9a-f]{8}) (\d{1,12}) (\d{1,15}) ([A-Za-z0-9+/=]+|-) "
    rb"([0-9a-f]{32}|-)\n?$"
)


@dataclass(frozen=True, slots=True)
class Datagram:
    """A decoded datagram. ``line`` is None for heartbeats."""

    ecc: bool | None
    line: str | None
    extended: bool = False
    dut: str | None = None
    session: str | None = None
    seq: int | None = None
    sent_ms: int | None = None
    truncated: bool = False
    signed: bool = False

    @property
    def heartbeat(self) -> bool:
        return self.line is None


class DatagramError(ValueError):
    """A datagram that must not be counted; ``reason`` is one of the verifier's counters."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# -- encoding -----------------------------------------------------------------------------------------------


def encode_legacy(line: str, ecc: bool) -> bytes:
    body = line.encode("ascii", "replace")
    if len(body) > MAX_DATAGRAM - 1:
        body = body[: MAX_DATAGRAM - 2] + b"\n"
    return bytes([ECC_ON if ecc else ECC_OFF]) + body


def decode_key(text: str | bytes) -> bytes:
    """A campaign's datagram key as written in the secrets file or a DUT's key file: hex when it is at
    least 16 bytes of hex digits (as the server writes generated keys), else the text's own bytes.

    The server and the DUT both decode with this, so a key reads the same on both ends."""
    raw = (text.encode() if isinstance(text, str) else text).strip()
    if not raw:
        raise ValueError("the datagram key is empty")
    if len(raw) >= 32 and len(raw) % 2 == 0 and re.fullmatch(rb"[0-9a-fA-F]+", raw):
        return bytes.fromhex(raw.decode())
    return raw


def _mac(key: bytes, signed_part: bytes) -> bytes:
    return hmac.new(key, signed_part, hashlib.sha256).hexdigest()[: 2 * _MAC_BYTES].encode()


def encode_extended(
    line: str | None, ecc: bool, dut: str, session: str, seq: int, key: bytes | None, sent_ms: int | None = None
) -> bytes:
    if not _DUT.match(dut):
        raise ValueError(f"DUT name {dut!r} must match {_DUT.pattern} to travel in a datagram")
    if sent_ms is None:
        sent_ms = int(time.time() * 1000)
    kind, payload = b"H", b"-"
    if line is not None:
        raw = line.encode("ascii", "replace")
        fixed = len(_TAG) + 2 + len(dut) + 1 + 9 + len(str(seq)) + 1 + len(str(sent_ms)) + 1 + 1 + 2 * _MAC_BYTES + 2
        room = (MAX_DATAGRAM - 1 - fixed) // 4 * 3
        kind = b"L"
        if len(raw) > room:
            raw, kind = raw[: room - 1] + b"\n", b"T"
        payload = base64.b64encode(raw)
    signed = b"%s%s %s %s %d %d %s" % (_TAG, kind, dut.encode(), session.encode(), seq, sent_ms, payload)
    mac = _mac(key, signed) if key else b"-"
    return bytes([ECC_ON if ecc else ECC_OFF]) + signed + b" " + mac + b"\n"


# -- decoding -----------------------------------------------------------------------------------------------


def decode(data: bytes) -> Datagram:
    """Decode either form without verifying anything (see :class:`DatagramVerifier`)."""
    if len(data) < 2 or len(data) > MAX_DATAGRAM * 4:
        raise DatagramError("malformed", f"{len(data)} bytes")
    if data[0] not in _ECC_BYTES:
        raise DatagramError("malformed", f"first byte 0x{data[0]:02x} is not an ECC flag")
    ecc = _ECC_BYTES[data[0]]
    body = data[1:]
    if not body.startswith(_TAG):
        try:
            return Datagram(ecc=ecc, line=body.decode("ascii"))
        except UnicodeDecodeError as exc:
            raise DatagramError("malformed", "line is not ASCII") from exc
    m = _EXT.match(body)
    if not m:
        raise DatagramError("malformed", "bad extended datagram")
    kind, dut, session, seq, sent_ms, payload, mac = m.groups()
    line = None
    if kind != b"H":
        try:
            line = base64.b64decode(payload, validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatagramError("malformed", "payload is not base64 ASCII") from exc
    return Datagram(
        ecc=ecc,
        line=line,
        extended=True,
        dut=dut.decode(),
        session=session.decode(),
        seq=int(seq),
        sent_ms=int(sent_ms),
        truncated=kind == b"T",
        signed=mac != b"-",
    )


def _check_mac(data: bytes, key: bytes) -> bool:
    body = data[1:].rstrip(b"\n")
    signed, _, mac = body.rpartition(b" ")
    return hmac.compare_digest(mac, _mac(key, signed))


@dataclass(slots=True)
class _Session:
    highest: int
    seen: set[int]
    last_ms: int


@dataclass
class DatagramVerifier:
    """Server-side check of extended datagrams, with counters of what it rejected and why.

    ``keys`` maps each known DUT to its key, or to None for a DUT without one: its extended datagrams are
    refused (``unsigned``) unless ``allow_unsigned`` (a lab bench on a closed network). A DUT with a key must
    sign: an unsigned datagram claiming its name is rejected as ``bad-mac``.

    Replays: a (session, seq) pair is taken once. Sessions live per DUT, least recently used first, and go as
    soon as their newest datagram is older than the freshness window (every datagram of theirs is then stale
    anyway), so the check is O(1) and at most ``max_sessions`` sessions per DUT exist. ``floors`` carries what
    a previous server may have accepted (per DUT, the send time at or below which everything is refused), and
    ``newest_ms`` what this one accepted, so that a restarted server keeps refusing replays (see the
    watchdog's receiver, which persists them).
    """

    keys: dict[str, bytes | None]
    window_s: float = 30.0
    reorder: int = 256
    max_sessions: int = 64
    allow_unsigned: bool = False
    floors: dict[str, int] = field(default_factory=dict)
    rejected: Counter = field(default_factory=Counter)
    accepted: int = 0
    newest_ms: dict[str, int] = field(default_factory=dict)
    _sessions: dict[str, OrderedDict[str, _Session]] = field(default_factory=dict)

    def verify(self, data: bytes, now: float | None = None) -> Datagram:
        """Return the datagram if it is to be believed, else raise :class:`DatagramError` (and count it)."""
        try:
            dg = decode(data)
            if dg.extended:
                self._verify_extended(dg, data, time.time() if now is None else now)
        except DatagramError as exc:
            self.rejected[exc.reason] += 1
            raise
        self.accepted += 1
        return dg

    @property
    def session_count(self) -> int:
        return sum(len(s) for s in self._sessions.values())

    def _verify_extended(self, dg: Datagram, data: bytes, now: float) -> None:
        # decode() fills dut, session, seq and sent_ms for every extended datagram.
        dut, session, seq, sent_ms = str(dg.dut), str(dg.session), int(dg.seq or 0), int(dg.sent_ms or 0)
        if dut not in self.keys:
            raise DatagramError("unknown-dut", dut)
        key = self.keys[dut]
        if key is None:
            if not self.allow_unsigned:
                raise DatagramError("unsigned", f"{dut} has no key: it may send the legacy form only")
        elif not dg.signed or not _check_mac(data, key):
            raise DatagramError("bad-mac", dut)
        now_ms = now * 1000
        if abs(now_ms - sent_ms) > self.window_s * 1000:
            raise DatagramError("stale", f"{dut} sent {(now_ms - sent_ms) / 1000:.1f} s ago")
        if sent_ms <= self.floors.get(dut, -1):
            raise DatagramError("replay", f"{dut} sent it before the server restarted")
        sessions = self._sessions.get(dut)
        if sessions is None:
            sessions = self._sessions[dut] = OrderedDict()
        sess = sessions.get(session)
        if sess is None:
            horizon = now_ms - self.window_s * 1000
            while sessions:
                oldest = next(iter(sessions.values()))
                if oldest.last_ms >= horizon:
                    break
                sessions.popitem(last=False)
            if len(sessions) >= self.max_sessions:
                raise DatagramError("too-many-sessions", f"{dut}: {len(sessions)} sessions in {self.window_s:g} s")
            sessions[session] = _Session(seq, {seq}, sent_ms)
        else:
            if seq in sess.seen or seq <= sess.highest - self.reorder:
                raise DatagramError("replay", f"{dut} session {session} seq {seq}")
            sess.seen.add(seq)
            sess.highest = max(sess.highest, seq)
            sess.last_ms = max(sess.last_ms, sent_ms)
            if len(sess.seen) > 2 * self.reorder:
                sess.seen = {s for s in sess.seen if s > sess.highest - self.reorder}
            sessions.move_to_end(session)
        if sent_ms > self.newest_ms.get(dut, -1):
            self.newest_ms[dut] = sent_ms


# -- sending ------------------------------------------------------------------------------------------------


class DatagramSender:
    """Streams log lines to the server: a :data:`~diehardlab.formats.writer.Sink` for :class:`LogWriter`.

    Legacy form when ``dut`` is None; extended form (signed when ``key`` is given) otherwise.
    UDP sends do not block for long, but the socket still has a timeout so a full buffer cannot hang a
    benchmark.
    """

    def __init__(
        self, host: str, port: int, ecc: bool, dut: str | None = None, key: bytes | None = None, timeout: float = 0.5
    ):
        self.ecc = ecc
        self.dut = dut
        self.key = key
        self.session = os.urandom(4).hex()
        self.seq = 0
        self.sent = 0
        self.last_sent = time.monotonic()
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._addr = addr
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.settimeout(timeout)

    def _send(self, payload: bytes) -> None:
        self._sock.sendto(payload, self._addr)
        self.sent += 1
        self.last_sent = time.monotonic()

    def send_line(self, line: str) -> None:
        if self.dut is None:
            self._send(encode_legacy(line, self.ecc))
        else:
            self._send(encode_extended(line, self.ecc, self.dut, self.session, self.seq, self.key))
            self.seq += 1

    __call__ = send_line

    def heartbeat(self) -> None:
        """An extended heartbeat (no line). Legacy senders have none: every line is their heartbeat."""
        if self.dut is None:
            raise ValueError("heartbeats need the extended form: give the sender a DUT name")
        self._send(encode_extended(None, self.ecc, self.dut, self.session, self.seq, self.key))
        self.seq += 1

    def close(self) -> None:
        self._sock.close()
