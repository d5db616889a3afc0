"""Benchmark of the campaign server: CPU cost of supervising 50 DUTs that stream datagrams, and how fast a
silent benchmark is detected and restarted, with and without a flood of forged datagrams.

1. CPU: the real server (``diehard serve``, local transport, 50 DUTs whose benchmarks are idle processes,
   extended signed datagrams) against a plain UDP receiver that only counts datagrams, fed the same stream
   of libLogHelper lines by the same sender, side by side, alternating, ``--repeats`` times. Printed: CPU
   seconds per 1000 datagrams (median), the server's CPU share of one core, and the ratio server / plain.
2. Detection latency: while the 50 DUTs stream, one of them runs a real benchmark (tests/watchdog/dut_app.py)
   that the script SIGSTOPs again and again. From the journal (monotonic clock): silence -> hang-detected
   beyond the configured liveness timeout, and silence -> app-restart -> benchmark-start; median and p99.
3. ``--flood RATE`` (instead of 1 and 2): the same 50-DUT server (the last ``--legacy`` DUTs keyless, legacy
   form) while a second sender floods it with unsigned extended datagrams, each with a fresh session id,
   naming the keyless DUTs in turn (the attack of issue 18; ``--flood-target all``: every DUT), RATE per
   second. Trials alternate flood off and on in one server run; each trial is one SIGSTOP of the real
   benchmark. Printed per condition: detection latency (median, p99) and the server's CPU share of one core
   during the trials; then what the server received and rejected.
   ``--server-root DIR`` runs the server from another source tree (e.g. an export of an older commit), so a
   fix can be measured against the code before it in the same way.

Run: PYTHONPATH=. python tests/bench/bench_watchdog_server.py [--duts 50] [--rate 20] [--seconds 8]
     PYTHONPATH=. python tests/bench/bench_watchdog_server.py --flood 2000 --trials 20 [--server-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from diehardlab.formats.datagram import encode_extended  # noqa: E402

APP = ROOT / "tests" / "watchdog" / "dut_app.py"
PLAIN = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
n = 0
s.settimeout(0.5)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        s.recvfrom(2048)
        n += 1
    except socket.timeout:
        pass
print(n, flush=True)
"""


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def campaign(tmp: Path, n: int, port: int, app_liveness: float | None, legacy: int = 0) -> Path:
    text = textwrap.dedent(f"""
        [campaign]
        name = "bench"
        [server]
        bind = "127.0.0.1"
        udp_port = {port}
        log_dir = "logs"
        journal = "journal.jsonl"
        poll_s = 0.2
        [escalation]
        max_app_restarts = 1000000
        """)
    for i in range(n):
        real = app_liveness is not None and i == 0
        if i >= n - legacy:  # keyless DUTs: the legacy form, from their own address only
            text += textwrap.dedent(f"""
                [[dut]]
                name = "b{i:02d}"
                transport = "local"
                datagram = "legacy"
                source_ip = "127.0.0.2"
                liveness_timeout_s = 3600
                stop_grace_s = 0
                local_boot_s = 0
                [[dut.benchmark]]
                name = "bench"
                argv = ["sleep", "100000"]
                """)
            continue
        argv = (
            [sys.executable, str(APP), "--server", "{server_host}:{server_port}", "--log-dir", "{log_dir}",
             "--bench", "{benchmark}", "--hostname", "{hostname}", "--dut", "{dut}", "--key-file", "{key_file}",
             "--period", "0.05"]
            if real else ["sleep", "100000"]
        )  # fmt: skip
        text += textwrap.dedent(f"""
            [[dut]]
            name = "b{i:02d}"
            transport = "local"
            datagram = "extended"
            datagram_key = "generate"
            liveness_timeout_s = {app_liveness if real else 3600}
            stop_grace_s = 0
            local_boot_s = 0
            [[dut.benchmark]]
            name = "bench"
            argv = {json.dumps(argv)}
            start_timeout_s = 30
            """)
    path = tmp / "campaign.toml"
    path.write_text(text)
    return path


# Runs 'diehard serve' from another source tree: maps the import names onto its folders as pyproject does.
OTHER_ROOT = """
import importlib.machinery, sys
root, args = sys.argv[1], sys.argv[2:]
names = {"diehardlab", "diehardlab.watchdog", "diehardlab.harness", "diehardlab.analysis", "diehardlab.hardening",
         "diehardlab.demo"}
class Finder:  # diehardlab.watchdog -> <root>/watchdog, as the package-dir table of pyproject.toml says
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.PathFinder.find_spec(name, [root]) if name in names else None
sys.meta_path.insert(0, Finder())
"""


def start_server(path: Path, seconds: float, root: Path = ROOT) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(root)}
    if root == ROOT:
        cmd = [sys.executable, "-m", "diehardlab.watchdog", "serve", str(path), "--duration", str(seconds)]
    else:
        shim = OTHER_ROOT + "from diehardlab.cli import main\nraise SystemExit(main(args))\n"
        cmd = [sys.executable, "-c", shim, str(root), "serve", str(path), "--duration", str(seconds)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_keys(tmp: Path, n: int, first: int = 0) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    deadline = time.monotonic() + 60
    while len(keys) < n - first and time.monotonic() < deadline:
        for i in range(first, n):
            f = tmp / "local-duts" / f"b{i:02d}" / "run" / "datagram.key"
            if f.exists() and f.stat().st_size > 10:
                keys[f"b{i:02d}"] = bytes.fromhex(f.read_text().strip())
        time.sleep(0.1)
    return keys


def stream(port: int, keys: dict[str, bytes], rate: float, seconds: float) -> int:
    """Every DUT sends ``rate`` lines per second: mostly #IT, an #ERR + #SDC now and then."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = ("127.0.0.1", port)
    names = sorted(keys)
    seq = dict.fromkeys(names, 0)
    sessions = {n: os.urandom(4).hex() for n in names}
    interval = 1.0 / rate
    start = time.monotonic()
    sent = 0
    tick = 0
    while time.monotonic() - start < seconds:
        for n in names:
            it = seq[n]
            line = f"#IT {it} KerTime:0.0500000 AccTime:{it * 0.05:.7f}\n"
            if it % 50 == 49:
                line = f"#SDC Ite:{it} KerTime:0.0500000 AccTime:{it * 0.05:.7f} KerErr:1 AccErr:{it // 50 + 1}\n"
            sock.sendto(encode_extended(line, False, n, sessions[n], it, keys[n]), addr)
            seq[n] += 1
            sent += 1
        tick += 1
        delay = start + tick * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    sock.close()
    return sent


def cpu_run(n: int, rate: float, seconds: float) -> tuple[float, float, int, float, float]:
    """One server run and one plain-receiver run on the same stream; CPU seconds during the stream."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        srv = start_server(campaign(tmp, n, port, None), seconds + 60)
        keys = wait_keys(tmp, n)
        time.sleep(1.0)  # let the supervisors settle after starting their benchmarks
        c0 = cpu_s(srv.pid)
        sent = stream(port, keys, rate, seconds)
        time.sleep(0.3)
        server_cpu = cpu_s(srv.pid) - c0
        srv.send_signal(signal.SIGINT)
        srv.wait(timeout=60)
        journal = [json.loads(x) for x in (tmp / "journal.jsonl").read_text().splitlines() if x.strip()]
        stop = next(r for r in journal if r["event"] == "server-stop")
        accepted = stop["datagrams"] - sum(stop["rejected"].values())
    port = free_port()
    plain = subprocess.Popen(
        [sys.executable, "-c", PLAIN, str(port), str(seconds + 2)], stdout=subprocess.PIPE, text=True
    )
    plain.stdout.readline()
    c0 = cpu_s(plain.pid)
    stream(port, keys, rate, seconds)
    time.sleep(0.3)
    plain_cpu = cpu_s(plain.pid) - c0
    got = int(plain.communicate(timeout=30)[0].split()[-1])
    return server_cpu, plain_cpu, sent, accepted / max(sent, 1), got / max(sent, 1)


def feed(port: int, keys: dict[str, bytes], rate: float) -> tuple[threading.Thread, threading.Event]:
    """Every keyed DUT streams ``rate`` lines/s from a thread until the returned event is set."""
    stop = threading.Event()

    def feeder():
        while not stop.is_set():
            stream(port, keys, rate, 2.0)

    t = threading.Thread(target=feeder, daemon=True)
    t.start()
    return t, stop


def b00_events(journal: Path, name: str) -> list[dict]:
    """The journal's ``name`` events of DUT b00 (the one the latency trials silence)."""
    return [json.loads(x) for x in journal.read_text().splitlines() if f'"event":"{name}"' in x and '"dut":"b00"' in x]


def b00_run(journal: Path) -> list[dict]:
    """Wait for b00's first benchmark start; its ``benchmark-start`` events."""
    while not (mine := b00_events(journal, "benchmark-start")):
        time.sleep(0.05)
    return mine


def silence_b00(journal: Path, mine: list[dict], liveness: float) -> tuple[float, list[dict]]:
    """SIGSTOP b00's running benchmark and wait until the watchdog started the next one (or gave up): the
    monotonic time of the silence and the ``benchmark-start`` events after it."""
    n_before = len(mine)
    silent_at = time.monotonic()
    os.kill(mine[-1]["pid"], signal.SIGSTOP)
    deadline = time.monotonic() + liveness + 30
    while time.monotonic() < deadline:
        mine = b00_events(journal, "benchmark-start")
        if len(mine) > n_before:
            break
        time.sleep(0.02)
    return silent_at, mine


def latency_run(n: int, rate: float, trials: int, liveness: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        srv = start_server(campaign(tmp, n, port, liveness), 3600)
        keys = wait_keys(tmp, n, first=1)
        journal = tmp / "journal.jsonl"
        out = []
        t, stop = feed(port, keys, rate)
        try:
            for _ in range(trials):
                mine = b00_run(journal)
                time.sleep(0.8)  # the benchmark runs and streams
                silent_at, mine = silence_b00(journal, mine, liveness)
                hang = b00_events(journal, "hang-detected")[-1]
                restart = b00_events(journal, "app-restart")[-1]
                out.append(
                    {
                        "detect_beyond_timeout_s": hang["mono"] - silent_at - liveness,
                        "silence_to_restart_s": restart["mono"] - silent_at,
                        "silence_to_new_start_s": mine[-1]["mono"] - silent_at,
                    }
                )
        finally:
            stop.set()
            t.join(timeout=5)
            srv.send_signal(signal.SIGINT)
            srv.wait(timeout=60)
        return out


def flood(port: int, names: list[str], rate: float, on: threading.Event, stop: threading.Event, sent: list[int]):
    """Unsigned extended heartbeats, a fresh session id each, naming every DUT in turn, ``rate`` per second while
    ``on`` is set (in bursts of 10 ms)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = ("127.0.0.1", port)
    i = 0
    tick = time.monotonic()
    per_tick = max(1, round(rate / 100))
    while not stop.is_set():
        tick += 0.01
        if on.is_set():
            for _ in range(per_tick):
                sock.sendto(encode_extended(None, False, names[i % len(names)], f"{i & 0xFFFFFFFF:08x}", 0, None), addr)
                i += 1
            sent[0] += per_tick
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()
    sock.close()


def streaming(dut_dir: Path, lines: int = 5, timeout: float = 60) -> None:
    """Wait until the DUT's newest run has written ``lines`` more #IT lines to its own log."""

    def its() -> int:
        return sum(p.read_bytes().count(b"#IT") for p in dut_dir.glob("*.log"))

    start, deadline = its(), time.monotonic() + timeout
    while its() < start + lines and time.monotonic() < deadline:
        time.sleep(0.02)


def flood_run(
    n: int, rate: float, trials: int, liveness: float, flood_rate: float, legacy: int, root: Path, target: str
) -> dict:
    """One server run; trials alternate flood off / on. Returns the per-trial measures and the rejections."""
    names = [f"b{i:02d}" for i in range(n)]
    targets = names[n - legacy :] if target == "legacy" and legacy else names
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        srv = start_server(campaign(tmp, n, port, liveness, legacy), 3600, root)
        keys = wait_keys(tmp, n - legacy, first=1)
        journal = tmp / "journal.jsonl"

        def events(name: str) -> list[dict]:
            return [json.loads(x) for x in journal.read_text().splitlines() if f'"event":"{name}"' in x]

        on = threading.Event()
        sent = [0]
        feeder, stop = feed(port, keys, rate)
        flooder = threading.Thread(target=flood, args=(port, targets, flood_rate, on, stop, sent), daemon=True)
        flooder.start()
        threads = [feeder, flooder]
        out: list[dict] = []
        try:
            for k in range(trials):
                flooding = k % 2 == 1
                (on.set if flooding else on.clear)()
                mine = b00_run(journal)
                # the new run streams (its own log grows: a slow start on a loaded machine is no hang), and the
                # flood, when on, is under way
                streaming(tmp / "local-duts" / "b00")
                time.sleep(0.3)
                c0, w0 = cpu_s(srv.pid), time.monotonic()
                n_before = len(mine)
                silent_at, mine = silence_b00(journal, mine, liveness)
                c1, w1 = cpu_s(srv.pid), time.monotonic()
                hangs = [r for r in b00_events(journal, "hang-detected") if r["mono"] >= silent_at]
                out.append(
                    {
                        "flood": flooding,
                        "cpu_share": (c1 - c0) / (w1 - w0),
                        "detect_beyond_timeout_s": hangs[0]["mono"] - silent_at - liveness if hangs else None,
                        "silence_to_new_start_s": mine[-1]["mono"] - silent_at if len(mine) > n_before else None,
                    }
                )
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)
            srv.send_signal(signal.SIGINT)
            srv.wait(timeout=120)
        stops = events("server-stop")
        false = [r for r in events("hang-detected") + events("crash-detected") if r["dut"] != "b00"]
        return {"trials": out, "flood_sent": sent[0], "rejected": stops[-1]["rejected"] if stops else {},
                "received": stops[-1]["datagrams"] if stops else 0, "false_alarms": len(false)}  # fmt: skip


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) > 1 else xs[0]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--duts", type=int, default=50)
    p.add_argument("--rate", type=float, default=20.0, help="lines per second per DUT")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trials", type=int, default=15)
    p.add_argument("--liveness", type=float, default=1.0)
    p.add_argument("--flood", type=float, default=0.0, help="unsigned datagrams per second: the flood comparison")
    p.add_argument("--legacy", type=int, default=5, help="--flood: how many of the DUTs are keyless (legacy form)")
    p.add_argument("--server-root", type=Path, default=ROOT, help="run the server from this source tree")
    p.add_argument("--flood-target", choices=("legacy", "all"), default="legacy",
                   help="--flood: name the keyless DUTs (the attack of issue 18) or every DUT in turn")  # fmt: skip
    a = p.parse_args()
    if a.flood > 0:
        return main_flood(a)

    runs = [cpu_run(a.duts, a.rate, a.seconds) for _ in range(a.repeats)]
    srv = statistics.median(r[0] for r in runs)
    plain = statistics.median(r[1] for r in runs)
    sent = statistics.median(r[2] for r in runs)
    print(f"watchdog bench: {a.duts} DUTs x {a.rate:g} lines/s (extended, signed) for {a.seconds:g} s, "
          f"{a.repeats} runs; {sent:.0f} datagrams per run")  # fmt: skip
    print(f"server accepted {statistics.median(r[3] for r in runs):.1%} of datagrams, plain receiver got "
          f"{statistics.median(r[4] for r in runs):.1%}")  # fmt: skip
    print(f"server CPU  : median {srv:.3f} s = {srv / sent * 1000 * 1000:.1f} ms per 1000 datagrams, "
          f"{srv / a.seconds:.1%} of one core")  # fmt: skip
    print(f"plain UDP   : median {plain:.3f} s = {plain / sent * 1000 * 1000:.1f} ms per 1000 datagrams, "
          f"{plain / a.seconds:.1%} of one core")  # fmt: skip
    print(f"ratio server/plain CPU: {srv / max(plain, 1e-9):.1f}x")

    lat = latency_run(a.duts, a.rate, a.trials, a.liveness)
    for key in ("detect_beyond_timeout_s", "silence_to_restart_s", "silence_to_new_start_s"):
        xs = [x[key] for x in lat]
        print(f"latency {key:<24}: median {statistics.median(xs):.3f} s, p99 {p99(xs):.3f} s "
              f"(n={len(xs)}, liveness timeout {a.liveness:g} s, poll 0.2 s, {a.duts} DUTs streaming)")  # fmt: skip
    return 0


def _stats(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f} s, p99 {p99(xs):.3f} s" if xs else "none"


def main_flood(a: argparse.Namespace) -> int:
    r = flood_run(a.duts, a.rate, a.trials, a.liveness, a.flood, a.legacy, a.server_root, a.flood_target)
    signed = a.duts - a.legacy
    print(
        f"watchdog flood bench: {a.duts} DUTs ({signed} signed, streaming {a.rate:g} lines/s; {a.legacy} legacy), "
        f"liveness {a.liveness:g} s, poll 0.2 s; server from {a.server_root}; {a.trials} trials alternating flood "
        f"off/on ({a.flood:g} unsigned datagrams/s, fresh session ids, naming {a.flood_target} DUTs); load avg "
        f"{os.getloadavg()[0]:.1f}"
    )
    for flooding in (False, True):
        ts = [t for t in r["trials"] if t["flood"] == flooding]
        det = [t["detect_beyond_timeout_s"] for t in ts if t["detect_beyond_timeout_s"] is not None]
        new = [t["silence_to_new_start_s"] for t in ts if t["silence_to_new_start_s"] is not None]
        cpu = [t["cpu_share"] for t in ts]
        missed = f", {len(ts) - len(new)} not restarted within 30 s" if len(new) < len(ts) else ""
        print(
            f"flood {'on ' if flooding else 'off'}: hang detected beyond the timeout {_stats(det)}; silence -> new "
            f"start {_stats(new)}; server CPU median {statistics.median(cpu):.1%}, max {max(cpu):.1%} of one core "
            f"(n={len(ts)}{missed})"
        )
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items()))
    print(f"flood datagrams sent {r['flood_sent']}; server received {r['received']} datagrams in all, rejected: "
          f"{rejected or 'none'}; false hang/crash alarms on the other DUTs: {r['false_alarms']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
