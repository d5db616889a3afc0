"""The server's disk fills up (a real 2 MiB tmpfs, filled with a real file): the watchdogs keep watching, the
failure is reported once, the journal is held in memory and written when space returns, copies skip lines and
say so, and a stop on a still-full disk stops the benchmarks and loses no journal record silently."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.watchdog.conftest import app_argv, events, local_campaign, wait_for
from tests.watchdog.test_watchdog_local import dut

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "ab") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with pytest.raises(OSError) as info, open(disk / "probe", "ab") as f:
        f.write(b"x" * 8192)
        f.flush()
        os.fsync(f.fileno())
    assert info.value.errno == errno.ENOSPC
    (disk / "probe").unlink()
    return filler


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def crash_and_restart(dut_dir: Path) -> None:
    pid_file = dut_dir / "run" / "benchmark.pid"
    pid = wait_for(lambda: _pid(pid_file))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _pid(pid_file) not in (None, pid), timeout=10)

    def own_logs() -> int:  # the DUT's own logs, on the DUT's disk; only the new run still writes
        return sum(p.stat().st_size for p in dut_dir.glob("*.log"))

    size = own_logs()
    wait_for(lambda: own_logs() > size + 300)  # it runs: its #IT lines reset the escalation counters


def test_a_full_disk_degrades_the_server_but_never_stops_supervision(small_disk, tmp_path):
    duts = tmp_path / "duts"  # the DUTs' own disks are not the server's
    body = "".join(dut(n, app_argv(), extra=f'local_dir = "{duts / n}"') for n in ("d1", "d2"))
    path = local_campaign(small_disk, body)
    j = small_disk / "journal.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    srv = subprocess.Popen(
        [sys.executable, "-m", "diehardlab.watchdog", "serve", str(path)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(events(j, "benchmark-start")) == 2, timeout=20)
        wait_for(lambda: sum(p.read_text().count("#IT") for p in (small_disk / "logs").glob("*.log")) > 10)
        filler = fill(small_disk)
        # full: d1's benchmark dies, again and again; its watchdog must still see it and restart it. (A file's
        # last page still takes a few records: enough crashes make sure the journal has to hold some.)
        for _ in range(3):
            crash_and_restart(duts / "d1")
        pid2 = _pid(duts / "d2" / "run" / "benchmark.pid")
        assert pid2 is not None and _alive(pid2)
        assert len(events(j, "crash-detected", "d1")) < 3  # held in memory: the disk took at most a few
        # space returns: the held records land, in order, and the episode is journaled once
        filler.unlink()
        wait_for(lambda: events(j, "storage-recovered"), timeout=10)
        assert [r["cause"] for r in events(j, "crash-detected", "d1")] == ["app-crash"] * 3
        names = [r["event"] for r in events(j, "crash-detected") + events(j, "storage-recovered")]
        assert names == ["crash-detected"] * 3 + ["storage-recovered"]
        wait_for(lambda: any("#INF SERVER skipped" in p.read_text() for p in (small_disk / "logs").glob("*.log")))
        # full again, and the operator stops the server: it stops cleanly, benchmarks included
        filler = fill(small_disk)
        for _ in range(2):
            crash_and_restart(duts / "d1")
        pids = [_pid(duts / n / "run" / "benchmark.pid") for n in ("d1", "d2")]
        srv.send_signal(signal.SIGINT)
        _, err = srv.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert srv.returncode == 1  # some journal records never reached the disk: printed below, and said so
    assert "Traceback" not in err and "never retrieved" not in err, err
    assert err.count("cannot write") == 2 and err.count("writes work again") == 1, err
    assert '"event":"server-stop"' in err and "records could not be written" in err
    assert not any(p and _alive(p) for p in pids)
    for p in (small_disk / "logs").glob("*.log"):
        text = p.read_text()
        assert text[24:].startswith("#SERVER_HEADER"), (p.name, text[:2000])  # no copy lost its header
