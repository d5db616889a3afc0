"""The libLogHelper v2 writer: exact bytes, both abort rules, detail caps, durability, streaming."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from diehardlab.formats import writer as writer_mod
from diehardlab.formats.datagram import DatagramSender, decode
from diehardlab.formats.parser import summarize
from diehardlab.formats.writer import BenchmarkAborted, LogWriter

T0 = datetime(2026, 11, 22, 10, 0, 5)


def make(tmp_path, **kw) -> LogWriter:
    kw.setdefault("interval", 2)
    return LogWriter(
        tmp_path,
        "resnet20",
        "model:resnet20 batch:4",
        ecc=False,
        hostname="board-1",
        now=lambda: T0,
        version="9.9",
        **kw,
    )


def test_bytes_match_libloghelper_v2(tmp_path):
    w = make(tmp_path)
    w.start_iteration()
    w.end_iteration(0.5)  # iteration 0 is printed (0 % 2 == 0)
    w.start_iteration()
    w.end_iteration(0.25)  # iteration 1 is not; the counter is now 2, as in log_helper.cpp
    w.log_critical(batch=0, img=3, i=0, golden=7, output=2, ground_truth=7)
    w.log_element(batch=0, img=3, i=2, golden=1.5, output=-2.25)
    w.log_error_count(2)
    w.start_iteration()
    w.end_iteration(0.25)
    w.log_info_detail("temp:45C")
    w.log_info_count(1)
    w.end_log_file()

    assert w.path.name == "2026_11_22_10_00_05_resnet20_ECC_OFF_board-1.log"
    assert (
        w.path.read_bytes()
        == textwrap.dedent(
            """\
        #HEADER model:resnet20 batch:4
        #BEGIN Y:2026 M:11 D:22 Time:10:00:05
        #INF diehardlab version:9.9 clock:UTC
        #IT 0 KerTime:0.5000000 AccTime:0.5000000
        #ERR batch:0 critical-img:3 i:0 g:7 o:2 gt:7
        #ERR batch:0 img:3 i:2 g:1.500000e+00 o:-2.250000e+00
        #SDC Ite:2 KerTime:0.2500000 AccTime:0.7500000 KerErr:2 AccErr:2
        #IT 2 KerTime:0.2500000 AccTime:1.0000000
        #INF temp:45C
        #INF Ite:3 KerTime:0.2500000 AccTime:1.0000000 KerInf:1
        #END
        """
        ).encode()
    )


def test_abort_when_the_same_count_repeats_in_consecutive_iterations(tmp_path):
    w = make(tmp_path, interval=1)
    for errors in (3, 0, 3):  # same count, not consecutive: no abort
        w.start_iteration()
        w.end_iteration(0.1)
        w.log_error_count(errors)
    w.start_iteration()
    w.end_iteration(0.1)
    with pytest.raises(BenchmarkAborted) as info:
        w.log_error_count(3)
    assert info.value.reason == "amount of errors equals of the last iteration"
    lines = w.path.read_text().splitlines()
    assert lines[-3:] == [
        "#SDC Ite:4 KerTime:0.1000000 AccTime:0.4000000 KerErr:3 AccErr:9",
        "#ABORT amount of errors equals of the last iteration",
        "#END",
    ]
    assert sum(line.startswith("#SDC") for line in lines) == 3


def test_equal_rule_can_be_disabled(tmp_path):
    w = make(tmp_path, interval=1, double_error_kill=False)
    for _ in range(3):
        w.start_iteration()
        w.end_iteration(0.1)
        w.log_error_count(2)
    w.end_log_file()
    assert "#ABORT" not in w.path.read_text()


def test_abort_on_too_many_errors_keeps_max_plus_one_details(tmp_path):
    w = make(tmp_path, interval=1, max_errors_per_iter=3)
    w.start_iteration()
    w.end_iteration(0.1)
    for k in range(6):
        w.log_error_detail(f"p:[{k}] r:1 e:2")
    with pytest.raises(BenchmarkAborted) as info:
        w.log_error_count(6)
    assert info.value.reason == "too many errors per iteration"
    lines = w.path.read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("#ERR")] == [f"#ERR p:[{k}] r:1 e:2" for k in range(4)]
    assert lines[-2:] == ["#ABORT too many errors per iteration", "#END"]


def test_details_cap_resets_every_iteration(tmp_path):
    w = make(tmp_path, interval=1, max_errors_per_iter=2, max_infos_per_iter=1)
    for _ in range(2):
        w.start_iteration()
        w.end_iteration(0.1)
        for k in range(5):
            w.log_error_detail(f"e{k}")
            w.log_info_detail(f"i{k}")
    w.end_log_file()
    text = w.path.read_text()
    assert text.count("#ERR ") == 2 * 3 and text.count("#INF i") == 2 * 2


def test_non_ascii_and_newlines_cannot_break_the_line_grammar(tmp_path):
    w = make(tmp_path)
    w.log_error_detail("température\n#END")
    w.end_log_file()
    lines = w.path.read_text().splitlines()
    assert lines[-2] == "#ERR temp?rature #END" and lines[-1] == "#END"


def test_round_trip_through_the_parser(tmp_path):
    w = make(tmp_path, interval=1)
    for it in range(20):
        w.start_iteration()
        w.end_iteration(0.01)
        if it in (5, 11):
            w.log_critical(0, 1, 0, 3, 4, 3)
            w.log_error_count(1)
        if it == 15:
            w.log_element(1, 2, 7, 0.5, 0.75)
            w.log_error_count(1)
    w.end_log_file()
    s = summarize(w.path)
    assert (s.benchmark, s.hostname, s.ecc, s.clock) == ("resnet20", "board-1", "OFF", "UTC")
    assert s.begin == T0 and s.header == "model:resnet20 batch:4"
    assert (s.first_iteration, s.last_iteration, s.it_lines) == (0, 19, 20)
    assert [(e.iteration, e.critical) for e in s.sdc] == [(6, True), (12, True), (16, False)]
    assert s.kernel_time == pytest.approx(0.2)
    assert s.ended and s.aborted is None and s.unparsed == 0


def test_every_sdc_abort_and_end_is_fsynced_and_other_lines_soon_after(tmp_path, monkeypatch):
    synced: list[float] = []
    real = os.fsync
    monkeypatch.setattr(writer_mod.os, "fsync", lambda fd: (synced.append(time.monotonic()), real(fd)))
    w = make(tmp_path, interval=1, fsync_interval=0.2)
    n0 = len(synced)  # the header block is synced once
    assert n0 == 1
    w.start_iteration()
    w.end_iteration(0.1)  # an #IT line: synced by the background thread within the interval
    deadline = time.monotonic() + 2
    while len(synced) == n0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(synced) == n0 + 1
    w.log_error_count(1)
    assert len(synced) == n0 + 2  # #SDC synced at once
    w.end_log_file()
    assert len(synced) == n0 + 3


KILLED_WRITER = """
import sys
from diehardlab.formats.writer import LogWriter
w = LogWriter(sys.argv[1], "bench", "h", ecc=True, hostname="h", interval=1)
print(w.path, flush=True)
i = 0
while True:
    w.start_iteration(); w.end_iteration(0.001)
    w.log_error_detail("x" * 300)
    i += 1
"""


def test_sigkill_loses_at_most_the_line_being_written(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    data = Path(path).read_bytes()
    assert data.count(b"\n") > 100
    # One write() per line on an O_APPEND descriptor: the file holds whole lines only.
    assert data.endswith(b"\n")
    s = summarize(path)
    assert s.unparsed == 0 and not s.ended


def test_lines_stream_to_the_server_as_legacy_datagrams(tmp_path):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    sender = DatagramSender("127.0.0.1", rx.getsockname()[1], ecc=True)
    w = make(tmp_path, interval=1, sinks=[sender])
    w.start_iteration()
    w.end_iteration(0.5)
    w.end_log_file()
    got = [rx.recvfrom(2048)[0] for _ in range(6)]
    assert all(d[0] == 0x0E for d in got)
    # First the path of the DUT's own file (libLogHelper's LocalAndUDPFile does the same), then every line.
    assert decode(got[0]).line == f"#LOGFILE {w.path}\n"
    assert "".join(decode(d).line for d in got[1:]) == w.path.read_text()
    rx.close()
    sender.close()


def test_a_disk_that_fills_up_cuts_the_partial_line_and_raises_once(tmp_path):
    from tests.badinput.disks import full_folder

    sent: list[str] = []
    with full_folder(tmp_path / "logs", free=4096) as logs:
        w = LogWriter(logs, "b", "h", ecc=False, hostname="x", interval=1, sinks=[sent.append])
        with pytest.raises(writer_mod.LogWriteError, match="No space left on device") as e:
            for _ in range(100_000):
                w.end_iteration(0.001)
        it = w.iteration
        assert f"at iteration {it}" in str(e.value) and "went to the server only" in str(e.value)
        w.end_iteration(0.001)  # raised once: later lines go to the sinks only
        w.log_stop("disk full")
        data = w.path.read_bytes()
        assert data.endswith(b"\n") and data.count(b"#IT ") == it  # whole lines, up to the failed one
        assert sent[-2:] == ["#INF STOP reason:disk full\n", "#END\n"] and f"#IT {it} " in "".join(sent)


def test_an_unlinked_log_is_written_again_from_the_open_file(tmp_path):
    import shutil

    w = make(tmp_path / "logs", interval=1, check_interval=0.0)
    w.end_iteration(0.5)
    shutil.rmtree(tmp_path / "logs")
    w.end_iteration(0.5)
    w.end_log_file()
    lines = w.path.read_text().splitlines()
    assert (
        lines[0].startswith("#HEADER ")
        and lines[-1] == "#END"
        and lines.count("#IT 1 KerTime:0.5000000 AccTime:1.0000000") == 1
    )
    assert lines[4] == "#INF log file was removed during the run; written again at its path from the open file at Ite:1"
    assert w.notices and str(w.path) in w.notices[0]


def test_an_unlinked_log_that_cannot_come_back_is_reported(tmp_path):
    w = make(tmp_path / "logs", interval=1, check_interval=0.0)
    (tmp_path / "logs" / w.path.name).unlink()
    (tmp_path / "logs" / w.path.name).write_text("someone else's file\n")
    with pytest.raises(writer_mod.LogWriteError, match="another file now has its name"):
        w.end_iteration(0.5)
    w.close()
