"""Local transport: the DUT's benchmarks are subprocesses of this machine, each in its own process group.

"Power off" kills the group (SIGKILL), "OS reboot" kills it and the host then stays unreachable for
``local_boot_s`` (a simulated boot). The DUT writes its own logs into ``<local_dir>`` (default
``<server log_dir>/../local-duts/<dut>``); they are "pulled" into the
server's log folder by copying, as SFTP would. A PID file in ``<local_dir>/run`` lets a restarted server find
and stop a benchmark its previous run left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from diehardlab.campaign import Dut

PID_FILE = "benchmark.pid"


def is_log_file(name: str) -> bool:
    """A DUT log, or a file that belongs to one (``<log>.truth.json``, ``<log>.chipir.txt`` of the simulator)."""
    return (name.endswith(".log") or ".log." in name) and not name.endswith(".part") and "/" not in name


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _kill_group(pid: int, sig: int) -> bool:
    """Signal the process group led by ``pid``; False when there is none (never signal a reused PID's group)."""
    try:
        if os.getpgid(pid) != pid:
            return False
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class LocalTransport:
    kind = "local"

    def __init__(self, dut: Dut, root: Path):
        self.dut = dut
        self.root = root
        self.log_dir = root  # the DUT's own log files, as the campaign contract names it
        self.run_dir = root / "run"  # PID file, stdout/stderr, datagram key
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen | None = None
        self._powered = True
        self._down_until = 0.0
        self._pulled: dict[str, int] = {}

    # -- benchmark ------------------------------------------------------------------------------------------

    def _pid(self) -> int | None:
        try:
            return int((self.run_dir / PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    async def start(self, bench: str, argv: list[str]) -> int:
        await self.stop(0.0)
        with open(self.run_dir / f"{bench}.out", "ab") as out:
            self._proc = subprocess.Popen(
                argv, cwd=self.run_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        (self.run_dir / PID_FILE).write_text(f"{self._proc.pid}\n")
        return self._proc.pid

    async def is_running(self) -> bool | None:
        if self._proc is not None:
            return self._proc.poll() is None
        pid = self._pid()
        return pid is not None and _alive(pid)

    async def stop(self, grace_s: float) -> None:
        pid = self._proc.pid if self._proc is not None else self._pid()
        if pid is not None:
            if _kill_group(pid, signal.SIGTERM):
                _kill_group(pid, signal.SIGCONT)  # a stopped process handles SIGTERM only once continued
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline and await self.is_running():
                    await asyncio.sleep(0.05)
            _kill_group(pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        (self.run_dir / PID_FILE).unlink(missing_ok=True)

    # -- host -----------------------------------------------------------------------------------------------

    async def reboot(self) -> None:
        await self.stop(0.0)
        self._down_until = time.monotonic() + self.dut.local_boot_s

    async def reachable(self) -> bool:
        return self._powered and time.monotonic() >= self._down_until

    async def wait_up(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not await self.reachable():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def power_lost(self) -> None:
        pid = self._proc.pid if self._proc is not None else self._pid()
        if pid is not None:
            _kill_group(pid, signal.SIGKILL)
        self._powered = False

    def power_restored(self) -> None:
        self._powered = True
        self._down_until = time.monotonic() + self.dut.local_boot_s

    # -- logs -----------------------------------------------------------------------------------------------

    async def pull_logs(self, dest: Path) -> list[Path]:
        """Copy the DUT's log files (and their companion files) that are new or grew since the last pull."""
        dest.mkdir(parents=True, exist_ok=True)
        got = []
        for src in sorted(p for p in self.log_dir.glob("*.log*") if is_log_file(p.name)):
            size = src.stat().st_size
            if self._pulled.get(src.name) == size and (dest / src.name).exists():
                continue
            part = dest / (src.name + ".part")  # as SFTP pulls: never a half copy under the log's own name
            try:
                shutil.copyfile(src, part)
                os.replace(part, dest / src.name)
            except OSError:
                part.unlink(missing_ok=True)
                raise
            self._pulled[src.name] = size
            got.append(dest / src.name)
        return got

    async def close(self) -> None:
        return None
