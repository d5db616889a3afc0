"""``diehard run`` as a real subprocess: the log, the UDP stream, SIGTERM, crashes and hangs of the beam simulator."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from diehardlab.formats.datagram import DatagramVerifier, decode
from diehardlab.formats.parser import read_lines, summarize
from tests.harness.conftest import kill_group, make_checkpoint, only_log, start_diehard, wait_for, write_spec

pytestmark = pytest.mark.timeout(120)


def base_args(ckpt, golden, log_dir, *extra):
    return ("run", str(ckpt), "--golden", str(golden), "--log-dir", str(log_dir), "--hostname", "dut1",
            "--benchmark", "smallnet-digits", *extra)  # fmt: skip


def finish(proc, timeout=90):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def drain(sock) -> list[tuple[float, bytes]]:
    got = []
    while True:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return got
        got.append((time.monotonic(), data))


def test_clean_run_writes_a_parsable_log_and_streams_every_line(ckpt, golden, tmp_path, udp):
    port = udp.getsockname()[1]
    proc = start_diehard(*base_args(ckpt, golden, tmp_path, "--iterations", "30", "--interval", "10",
                                    "--server", f"127.0.0.1:{port}"))  # fmt: skip
    rc, _, err = finish(proc)
    assert rc == 0, err
    log = only_log(tmp_path)
    assert log.name.endswith("_smallnet-digits_ECC_OFF_dut1.log")
    s = summarize(log)
    assert s.ended and s.clock == "UTC" and s.unparsed == 0 and s.sdc_count == 0
    assert s.it_lines == 3 and s.last_iteration == 20
    assert "model_sha256:" in s.header and s.begin is not None
    lines = [decode(d).line for _, d in drain(udp)]
    assert lines[0].startswith("#LOGFILE ") and lines[0].strip().endswith(log.name)
    assert [ln.rstrip("\n") for ln in lines[1:]] == read_lines(log)


def test_extended_signed_datagrams_and_heartbeats(ckpt, golden, tmp_path, udp):
    key = os.urandom(32)
    key_file = tmp_path / "datagram.key"
    key_file.write_text(key.hex() + "\n")
    key_file.chmod(0o600)
    port = udp.getsockname()[1]
    proc = start_diehard(*base_args(ckpt, golden, tmp_path / "logs", "--server", f"127.0.0.1:{port}", "--dut", "dut1",
                                    "--key-file", str(key_file), "--interval", "1000000", "--heartbeat", "0.2",
                                    "--duration", "2.5"))  # fmt: skip
    got = []
    while proc.poll() is None:
        got += drain(udp)
    got += drain(udp)
    rc, _, err = finish(proc)
    assert rc == 0, err
    verifier = DatagramVerifier({"dut1": key})
    dgs = [(t, verifier.verify(d)) for t, d in got]  # raises on a bad MAC, a replay or a stale datagram
    heartbeats = [dg.sent_ms / 1000 for _, dg in dgs if dg.heartbeat]  # the sender's clock
    assert len(heartbeats) >= 4  # ~2.5 s / 0.2 s, while only '#IT 0' was printed
    gaps = [b - a for a, b in itertools.pairwise(heartbeats)]
    assert sorted(gaps)[len(gaps) // 2] < 0.6  # (slow iterations on a loaded machine delay some)
    assert all(dg.signed and dg.dut == "dut1" for _, dg in dgs)
    lines = "".join(dg.line for _, dg in dgs if dg.line)
    assert "#IT 0 " in lines and "#END" in lines


def test_sigterm_writes_stop_reason_and_end(ckpt, golden, tmp_path):
    proc = start_diehard(*base_args(ckpt, golden, tmp_path, "--interval", "5"))
    try:
        assert wait_for(lambda: any(tmp_path.glob("*.log")) and "#IT 5 " in only_log(tmp_path).read_text())
        os.kill(proc.pid, signal.SIGTERM)
        rc, _, err = finish(proc, 30)
    finally:
        kill_group(proc)
    assert rc == 0, err
    s = summarize(only_log(tmp_path))
    assert s.stop_reason == "SIGTERM" and s.ended and s.unparsed == 0
    assert read_lines(only_log(tmp_path))[-2:] == ["#INF STOP reason:SIGTERM", "#END"]


def test_golden_of_another_model_is_refused(golden, tmp_path):
    other = make_checkpoint(tmp_path / "other", seed=1)
    proc = start_diehard(*base_args(other, golden, tmp_path / "logs", "--iterations", "1"))
    rc, _, err = finish(proc)
    assert rc == 2
    assert "was made for another model" in err and "diehard golden" in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").glob("*.log"))


def _truth(log: Path) -> dict:
    return json.loads(Path(str(log) + ".truth.json").read_text())


def test_every_simulated_output_change_is_an_sdc_critical_when_top1_changed(ckpt, golden, tmp_path):
    # 5 and 1 events per second: most faulty iterations hold one event.
    spec = write_spec(tmp_path / "sdc.toml", {"corrupt": 5e-6, "nan": 1e-6})
    proc = start_diehard(*base_args(ckpt, golden, tmp_path / "logs", "--simulate-beam", str(spec), "--duration", "3",
                                    "--interval", "1000", "--no-double-error-kill"))  # fmt: skip
    rc, _, err = finish(proc)
    assert rc == 0, err
    log = only_log(tmp_path / "logs")
    s, truth = summarize(log), _truth(log)
    assert truth["simulated"] and truth["ended"] == "duration" and truth["log_file"] == log.name
    events = truth["events"]
    changed = [e for e in events if e["observed"] == "sdc"]
    assert len(changed) >= 5 and any(e["kind"] == "nan" for e in changed)
    assert all(e["observed"] in ("sdc", "masked") for e in events)
    by_ite = {e.iteration: e for e in s.sdc}
    for e in changed:
        assert e["sdc_ite"] in by_ite, e
    # An #SDC is critical exactly when one of its events changed a top-1 (nothing else corrupts outputs).
    for ite, rec in by_ite.items():
        mine = [e for e in changed if e["sdc_ite"] == ite]
        assert mine, f"#SDC Ite:{ite} without an injected event"
        assert rec.critical == any(e["critical"] for e in mine)
    assert any(r.critical for r in s.sdc)
    # No beam-off period in this spec: all kernel time is beam-on, and the runner's own total agrees.
    kernel_s = float(re.search(r"#INF summary iterations:\d+ kernel_s:([\d.]+)", log.read_text()).group(1))
    assert truth["beam_on_kernel_time_s"] == pytest.approx(kernel_s, rel=1e-6)
    assert truth["kernel_time_s"] == pytest.approx(kernel_s, rel=1e-6)
    assert "SIMULATED BEAM" in log.read_text() and "SIMULATED-BEAM:test" in s.header
    chipir = Path(str(log) + ".chipir.txt").read_text().splitlines()
    assert chipir[0] == "Data From ChipIR" and len(chipir) >= 7


def test_simulated_crash_kills_the_process_and_leaves_a_readable_log(ckpt, golden, tmp_path):
    spec = write_spec(tmp_path / "crash.toml", {"corrupt": 2e-7, "crash": 4e-7})  # first crash after ~2 s
    proc = start_diehard(*base_args(ckpt, golden, tmp_path / "logs", "--simulate-beam", str(spec), "--interval", "1"))
    rc, _, _ = finish(proc)
    assert rc == -signal.SIGKILL
    log = only_log(tmp_path / "logs")
    s, truth = summarize(log), _truth(log)
    assert not s.ended and s.unparsed == 0 and s.it_lines > 0
    assert truth["ended"] == "crash" and truth["events"][-1]["kind"] == "crash"
    assert truth["events"][-1]["observed"] == "due"
    # The log stops at the iteration before the crash: #IT (interval 1) up to the crashing iteration.
    assert s.last_iteration == truth["events"][-1]["iteration"] - 1
    assert Path(str(log) + ".chipir.txt").is_file()


def test_simulated_hang_stops_iterations_and_ignores_sigterm(ckpt, golden, tmp_path):
    spec = write_spec(tmp_path / "hang.toml", {"hang": 5e-7})  # after ~2.5 s of kernel time
    logs = tmp_path / "logs"
    proc = start_diehard(*base_args(ckpt, golden, logs, "--simulate-beam", str(spec), "--interval", "1"))
    try:
        assert wait_for(lambda: any(logs.glob("*.truth.json")) and _truth(only_log(logs))["ended"] == "hang", 60)
        log = only_log(logs)
        size = log.stat().st_size
        time.sleep(1.0)
        assert log.stat().st_size == size  # no #IT any more
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # SIGTERM is ignored: the watchdog must SIGKILL the group
    finally:
        kill_group(proc)
    s = summarize(log)
    assert not s.ended and s.stop_reason is None and s.it_lines > 0


def test_once_prints_a_summary_and_the_log_path(ckpt, golden, tmp_path, tmp_path_factory):
    # (Run-to-run determinism of the summary and the output file: tests/harness/test_harness_nvbitfi.py.)
    proc = start_diehard(*base_args(ckpt, golden, tmp_path / "logs", "--once", "--output", "o.bin"), cwd=tmp_path)
    rc, out, err = finish(proc)
    assert rc == 0, err
    body, path = out.rsplit("Log file path ", 1)
    assert "result: MASKED errors:0 critical:0 tolerable:0" in body and "top1: " in body
    assert summarize(Path(path.strip())).ended
    assert (tmp_path / "o.bin").stat().st_size == 16 * 10 * 4
    # --once exits 0 whatever happens (NVBitFI reads stdout), even with a golden of another model.
    other = make_checkpoint(tmp_path_factory.mktemp("other") / "m", seed=2)
    proc = start_diehard(*base_args(other, golden, tmp_path / "logs2", "--once"), cwd=tmp_path)
    rc, out, _ = finish(proc)
    assert rc == 0 and "error:" in out and "another model" in out
