"""A beam spec with a huge cross section (issue 18, item 6): the bounded schedule against the unbounded one.

Side by side in one run, on the spec's rate (1e30 cm^2 x 1e6 n/cm^2/s = 1e36 events per second of kernel time)
and one 1 ms iteration:

- unbounded: ``PoissonSchedule.pop_until(t)`` without a limit (what the simulator did before): drawn for
  ``--seconds`` in a child process, which is then killed; events drawn and its peak memory;
- bounded: ``pop_until(t, MAX_EVENTS_PER_ITERATION)``, as the simulator does now: time per iteration;
- the real ``diehard run --simulate-beam`` on that spec (tiny digits model): how long after SIGTERM it exits,
  and, left alone, how long until it stops itself (``MAX_SATURATED_ITERATIONS``) with its one-line error.

    python tests/bench/bench_harness_runaway_spec.py [--seconds 10]

Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

UNBOUNDED = """
import resource, sys, threading, time, os
from diehardlab.harness.beam import PoissonSchedule
s = PoissonSchedule({"corrupt": 1e36}, 11)
n = [0]
orig = s._draw
def counted():
    n[0] += 1
    return orig()
s._draw = counted
def report():
    time.sleep(float(sys.argv[1]))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n[0]} {rss:.0f}", flush=True)
    os._exit(0)
threading.Thread(target=report, daemon=True).start()
s.pop_until(1e-3)
print("returned", flush=True)
"""


def unbounded(seconds: float) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", UNBOUNDED, str(seconds)], capture_output=True, text=True,
                         timeout=seconds + 60).stdout.split()  # fmt: skip
    return int(out[0]), float(out[1])


def bounded(iterations: int = 2000) -> float:
    from diehardlab.harness.beam import PoissonSchedule
    from diehardlab.harness.simulator import MAX_EVENTS_PER_ITERATION

    s = PoissonSchedule({"corrupt": 1e36}, 11)
    t0 = time.perf_counter()
    for i in range(iterations):
        s.pop_until((i + 1) * 1e-3, MAX_EVENTS_PER_ITERATION)
    return (time.perf_counter() - t0) / iterations


def real_runs() -> tuple[dict[str, float], dict[str, float]]:
    """``diehard run`` on the spec twice: SIGTERM after its first iteration; and left alone until it stops."""
    from diehardlab.harness.golden import make_golden, save_golden

    from tests.harness.conftest import make_checkpoint, write_spec

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ckpt = make_checkpoint(d / "ck")
        save_golden(make_golden(ckpt, samples=16, batch_size=8), d / "g.pt")
        spec = write_spec(d / "huge.toml", {"corrupt": 1e30})
        out = []
        for sigterm in (True, False):
            logs = d / f"logs-{sigterm}"
            argv = [sys.executable, "-m", "diehardlab", "run", str(ckpt), "--golden", str(d / "g.pt"), "--log-dir",
                    str(logs), "--hostname", "bench", "--benchmark", "huge", "--simulate-beam", str(spec),
                    "--no-double-error-kill", "--threads", "1", "--interval", "1"]  # fmt: skip
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if sigterm:
                while not any("#IT " in p.read_text() for p in logs.glob("*.log")) and proc.poll() is None:
                    time.sleep(0.01)
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=300)[1]
            took = time.monotonic() - t0
            log = next(logs.glob("*.log"))
            truth = json.loads(Path(str(log) + ".truth.json").read_text())
            its = sum(1 for ln in log.read_text().splitlines() if ln.startswith("#IT "))
            out.append({"iterations": its, "seconds": took, "rc": proc.returncode, "ended": truth["ended"],
                        "err": err.strip().splitlines()[-1][:90] if err.strip() else ""})  # fmt: skip
        return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; rate 1e36 events/s, one 1 ms iteration")
    n, rss = unbounded(a.seconds)
    print(f"unbounded pop_until: {n} events drawn in {a.seconds:g} s without returning, peak RSS {rss:.0f} MiB")
    per = bounded()
    print(f"bounded pop_until (cap 64): {per * 1e6:.0f} us per iteration")
    term, alone = real_runs()
    print(
        f"diehard run on it, SIGTERM after its first iteration: exit {term['rc']} {term['seconds']:.2f} s later "
        f"({term['iterations']} iterations, truth ended {term['ended']!r})"
    )
    print(
        f"diehard run on it, left alone: exit {alone['rc']} after {alone['seconds']:.1f} s from start "
        f"({alone['iterations']} iterations, truth ended {alone['ended']!r}): {alone['err']}"
    )
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the children (the unbounded draw included): {rss:.0f} MiB")


if __name__ == "__main__":
    main()
