"""The UDP datagram codec: legacy form both ways, extended form, and what the verifier rejects."""

from __future__ import annotations

import contextlib
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diehardlab.formats.datagram import (
    MAX_DATAGRAM,
    DatagramError,
    DatagramSender,
    DatagramVerifier,
    decode,
    encode_extended,
    encode_legacy,
)
from diehardlab.formats.parser import InfDetail, LogParser

KEY = b"campaign-secret-for-tests"
NOW = 1_790_000_000.0
NOW_MS = int(NOW * 1000)


def test_legacy_form_is_the_ecc_byte_then_the_line():
    assert encode_legacy("#IT 1 KerTime:0.1 AccTime:0.1\n", ecc=True) == b"\x0e#IT 1 KerTime:0.1 AccTime:0.1\n"
    assert encode_legacy("#END\n", ecc=False) == b"\x0d#END\n"
    dg = decode(b"\x0d#END\n")
    assert (dg.ecc, dg.line, dg.extended) == (False, "#END\n", False)


def test_legacy_datagrams_never_exceed_1024_bytes():
    data = encode_legacy("#ERR " + "x" * 5000 + "\n", ecc=True)
    assert len(data) == MAX_DATAGRAM and data.endswith(b"\n")


def test_swapped_ecc_bytes_of_some_libloghelper_builds_are_read_as_unknown():
    assert decode(b"\xee#END\n").ecc is None


@pytest.mark.parametrize("data", [b"", b"\x0e", b"\x41#END\n", b"\x0e\xff\xfe\n"])
def test_malformed_legacy(data):
    with pytest.raises(DatagramError) as info:
        decode(data)
    assert info.value.reason == "malformed"


def test_extended_round_trip_and_size():
    line = "#SDC Ite:2 KerTime:0.0100000 AccTime:0.0300000 KerErr:1 AccErr:2\n"
    data = encode_extended(line, True, "board-1", "0a1b2c3d", 7, KEY, sent_ms=NOW_MS)
    dg = DatagramVerifier({"board-1": KEY}).verify(data, now=NOW)
    assert (dg.line, dg.dut, dg.seq, dg.session, dg.ecc, dg.signed) == (line, "board-1", 7, "0a1b2c3d", True, True)
    long = encode_extended("#ERR " + "y" * 3000 + "\n", True, "b" * 32, "0a1b2c3d", 10**11, KEY, sent_ms=NOW_MS)
    assert len(long) <= MAX_DATAGRAM
    assert decode(long).truncated and decode(long).line.endswith("\n")


def test_extended_datagrams_are_info_lines_to_a_legacy_server():
    # A legacy server strips byte 0 and appends the rest to its copy: it must be an #INF line.
    data = encode_extended("#SDC Ite:2 KerTime:0.1 AccTime:0.2 KerErr:1 AccErr:1\n", False, "b1", "00000000", 0, KEY)
    text = data[1:].decode("ascii")
    (rec,) = LogParser().parse([text])
    assert isinstance(rec, InfDetail)
    assert "#SDC" not in text  # a substring-matching parser must not count it either


def test_heartbeat():
    data = encode_extended(None, True, "b1", "00000000", 3, KEY, sent_ms=NOW_MS)
    dg = DatagramVerifier({"b1": KEY}).verify(data, now=NOW)
    assert dg.heartbeat and dg.line is None


def _dg(seq=0, key=KEY, dut="board-1", session="0a1b2c3d", sent_ms=NOW_MS, line="#IT 1 KerTime:1 AccTime:1\n"):
    return encode_extended(line, True, dut, session, seq, key, sent_ms=sent_ms)


def test_forged_datagram_is_rejected():
    v = DatagramVerifier({"board-1": KEY})
    forged = _dg(key=b"not-the-campaign-key")
    with pytest.raises(DatagramError) as info:
        v.verify(forged, now=NOW)
    assert info.value.reason == "bad-mac"
    # A tampered payload with the original MAC, and an unsigned one, are rejected too.
    good = _dg()
    tampered = good.replace(b"#INF DHX1 L", b"#INF DHX1 T")
    for bad in (tampered, _dg(key=None)):
        with pytest.raises(DatagramError):
            v.verify(bad, now=NOW)
    assert v.rejected["bad-mac"] == 3 and v.accepted == 0


def test_replayed_datagram_is_rejected():
    v = DatagramVerifier({"board-1": KEY})
    v.verify(_dg(seq=0), now=NOW)
    v.verify(_dg(seq=2), now=NOW)
    v.verify(_dg(seq=1), now=NOW)  # reordering within the window is fine
    for seq in (0, 2):
        with pytest.raises(DatagramError) as info:
            v.verify(_dg(seq=seq), now=NOW)
        assert info.value.reason == "replay"
    assert v.accepted == 3 and v.rejected["replay"] == 2


def test_replay_of_an_old_session_is_stale():
    v = DatagramVerifier({"board-1": KEY}, window_s=30)
    old = _dg(seq=0, session="deadbeef", sent_ms=NOW_MS - 3_600_000)
    with pytest.raises(DatagramError) as info:
        v.verify(old, now=NOW)
    assert info.value.reason == "stale"


def test_unknown_dut_is_rejected():
    v = DatagramVerifier({"board-1": KEY})
    with pytest.raises(DatagramError) as info:
        v.verify(_dg(dut="intruder"), now=NOW)
    assert info.value.reason == "unknown-dut"


def test_unsigned_extended_form_for_a_dut_without_key():
    # refused unless asked for: a keyless DUT's name in an unsigned datagram proves nothing (issue 18)
    v = DatagramVerifier({"lab-board": None})
    with pytest.raises(DatagramError) as info:
        v.verify(_dg(dut="lab-board", key=None), now=NOW)
    assert info.value.reason == "unsigned" and v.session_count == 0
    v = DatagramVerifier({"lab-board": None}, allow_unsigned=True)
    assert v.verify(_dg(dut="lab-board", key=None), now=NOW).seq == 0


def test_session_bookkeeping_is_bounded_and_constant_time():
    v = DatagramVerifier({"board-1": KEY, "lab-board": None}, window_s=30, max_sessions=64)
    flood = [_dg(dut="lab-board", key=None, session=f"{i:08x}") for i in range(5000)]
    for dg in flood:  # the flood: unsigned, each with a fresh session id
        with pytest.raises(DatagramError):
            v.verify(dg, now=NOW)
    assert v.rejected["unsigned"] == 5000 and v.session_count == 0
    # a keyed DUT opening sessions faster than they expire is capped, not allowed to grow the table
    for i in range(200):
        with contextlib.suppress(DatagramError):
            v.verify(_dg(session=f"{i:08x}", sent_ms=NOW_MS + i), now=NOW + i / 1000)
    assert v.session_count == 64 and v.rejected["too-many-sessions"] == 136
    # sessions whose datagrams are all stale go, in O(1) each, and a fresh session gets in again
    later = NOW + 31
    assert v.verify(_dg(session="0badf00d", sent_ms=int(later * 1000)), now=later).seq == 0
    assert v.session_count == 1
    # replays within a session are still refused after other sessions came and went
    with pytest.raises(DatagramError) as info:
        v.verify(_dg(session="0badf00d", sent_ms=int(later * 1000)), now=later)
    assert info.value.reason == "replay"


def test_a_floor_refuses_what_a_previous_server_may_have_accepted():
    old = DatagramVerifier({"board-1": KEY})
    seen = [_dg(seq=i, sent_ms=NOW_MS + i) for i in range(3)]
    for dg in seen:
        old.verify(dg, now=NOW)
    assert old.newest_ms == {"board-1": NOW_MS + 2}
    new = DatagramVerifier({"board-1": KEY}, floors=dict(old.newest_ms))  # what the restarted server loads
    for dg in seen:
        with pytest.raises(DatagramError) as info:
            new.verify(dg, now=NOW)
        assert info.value.reason == "replay"
    assert new.verify(_dg(seq=3, sent_ms=NOW_MS + 3), now=NOW).seq == 3


def test_sender_over_loopback():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    s = DatagramSender("127.0.0.1", rx.getsockname()[1], ecc=False, dut="board-1", key=KEY)
    s.send_line("#IT 0 KerTime:0.1 AccTime:0.1\n")
    s.heartbeat()
    v = DatagramVerifier({"board-1": KEY})
    a, b = (v.verify(rx.recvfrom(2048)[0]) for _ in range(2))
    assert (a.seq, b.seq, a.line, b.heartbeat) == (0, 1, "#IT 0 KerTime:0.1 AccTime:0.1\n", True)
    assert a.session == b.session == s.session
    legacy = DatagramSender("127.0.0.1", rx.getsockname()[1], ecc=False)
    with pytest.raises(ValueError):
        legacy.heartbeat()
    rx.close()


@given(st.binary(max_size=1200))
@settings(max_examples=500, deadline=None)
def test_random_bytes_are_rejected_or_decoded_never_crash(data):
    v = DatagramVerifier({"board-1": KEY})
    try:
        v.verify(data, now=NOW)
    except DatagramError as exc:
        assert exc.reason in {"malformed", "unknown-dut", "bad-mac", "stale", "replay", "unsigned"}


def test_key_text_decodes_the_same_for_server_and_dut():
    from diehardlab.formats.datagram import decode_key

    key = bytes(range(32))
    assert decode_key(key.hex()) == key  # as the server writes generated keys
    assert decode_key(key.hex().encode() + b"\n") == key  # a key file with a trailing newline
    assert decode_key("a passphrase, not hex") == b"a passphrase, not hex"
    assert decode_key("abcd") == b"abcd"  # short hex-looking text is a passphrase, not 2 bytes
    with pytest.raises(ValueError, match="empty"):
        decode_key("  \n")
