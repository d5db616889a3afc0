"""Overhead of ``diehard run``'s loop against a bare loop of the same forward passes (same process, same batch).

The runner's iteration adds the on-device comparison with the golden outputs (one number to the host), the
libLogHelper bookkeeping (``#IT`` every ``--interval`` iterations) and the liveness check. The bare loop runs
only ``[model(x) for x in batches]`` + synchronize under ``torch.inference_mode``. Both run N iterations,
interleaved (alternating which goes first), R times; the printed ratio is the median of the per-round
ratios of iterations per second, in wall time and in CPU time of the (single) torch thread; the CPU-time ratio
resists the noise of a shared machine, where other processes steal wall time from both loops unevenly. Also
printed: the runner's own accounting in the same rounds (its loop time outside KerTime, relative to KerTime;
KerTime times exactly the bare loop's code). Target: overhead <= 3 % at batch 32 and 128.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        PYTHONPATH=. python tests/bench/bench_harness_runner.py [--rounds 21] [--seconds 0.2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diehardlab.hardening.checkpoint import load_model, save_config, save_model
from diehardlab.hardening.models import ModelConfig, build_model
from diehardlab.harness.device import pick_device, synchronize
from diehardlab.harness.golden import golden_record, save_golden
from diehardlab.harness.runner import Runner, RunOptions

CASES = [
    # name, model config, channels, image size
    ("resnet20-cifar", ModelConfig(arch="resnet20"), 3, 32),
    ("smallnet-digits", ModelConfig(arch="smallnet", width=8), 1, 8),
]


def make_case(root: Path, name: str, cfg: ModelConfig, channels: int, size: int, batch: int, dev) -> tuple[Path, Path]:
    ckpt = root / f"{name}-ckpt"
    if not (ckpt / "model.pt").is_file():
        torch.manual_seed(0)
        save_config(ckpt, {"model": cfg.to_dict(), "dataset": "bench", "in_channels": channels, "num_classes": 10})
        save_model(ckpt, build_model(cfg, channels, 10).eval())
    loaded = load_model(ckpt, dev)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(batch, channels, size, size, generator=gen)
    golden = save_golden(golden_record(loaded, inputs, torch.zeros(batch, dtype=torch.long), batch, 1e-3, dev),
                         root / f"{name}-b{batch}.pt")  # fmt: skip
    return ckpt, golden


def bare_loop(model, batches, n: int, dev) -> tuple[float, float]:
    """Wall and CPU time (this thread) of n bare iterations."""
    c0, t0 = time.thread_time(), time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            _ = [model(x) for x in batches]
            synchronize(dev)
    return time.perf_counter() - t0, time.thread_time() - c0


def runner_loop(runner: Runner, w, n: int) -> tuple[float, float, float]:
    """n iterations of the runner's loop on an open log (opening and closing a log is not the loop).

    Returns wall time, CPU time of this thread, and the kernel time (forward + synchronize) the runner accounted.
    """
    runner.o.iterations = w.iteration + n
    runner.stop_reason = None
    k0 = w.acc_time
    c0, t0 = time.thread_time(), time.perf_counter()
    runner.loop(w)
    return time.perf_counter() - t0, time.thread_time() - c0, w.acc_time - k0


def measure(ckpt: Path, golden: Path, log_dir: Path, rounds: int, seconds: float, dev) -> dict[str, float]:
    runner = Runner(RunOptions(ckpt_dir=ckpt, golden=golden, log_dir=log_dir, hostname="bench", benchmark="bench",
                               interval=10, device=str(dev)))  # fmt: skip
    runner.prepare()
    model, batches = runner.model, runner.batches
    per_iter = bare_loop(model, batches, 3, dev)[0] / 3
    n = max(3, int(seconds / per_iter))
    w = runner.open_log()
    wall, cpu, bare_t, run_t, accounted = [], [], [], [], []
    for r in range(rounds):
        if r % 2:
            t_run, c_run, k_run = runner_loop(runner, w, n)
            t_bare, c_bare = bare_loop(model, batches, n, dev)
        else:
            t_bare, c_bare = bare_loop(model, batches, n, dev)
            t_run, c_run, k_run = runner_loop(runner, w, n)
        bare_t.append(t_bare / n)
        run_t.append(t_run / n)
        wall.append(t_bare / t_run)  # = (runner it/s) / (bare it/s)
        cpu.append(c_bare / c_run)
        accounted.append((t_run - k_run) / k_run)
    w.end_log_file()
    if runner.sdc_iterations:
        raise RuntimeError("the bench model must run fault-free")
    return {
        "n": n,
        "bare_ips": 1 / statistics.median(bare_t),
        "run_ips": 1 / statistics.median(run_t),
        "wall": statistics.median(wall),
        "cpu": statistics.median(cpu),
        "accounted": statistics.median(accounted),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--seconds", type=float, default=0.2, help="length of each timed loop")
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", default="32,128")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the CI runners are shared)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = pick_device(a.device)
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, {a.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, cfg, ch, size in CASES:
            for batch in (int(b) for b in a.batches.split(",")):
                ckpt, golden = make_case(root, name, cfg, ch, size, batch, dev)
                m = measure(ckpt, golden, root / "logs", a.rounds, a.seconds, dev)
                print(
                    f"{name} batch {batch}: bare {m['bare_ips']:.2f} it/s, diehard run {m['run_ips']:.2f} it/s;"
                    f" median ratio wall {m['wall']:.4f} (overhead {100 * (1 - m['wall']):+.2f} %),"
                    f" CPU {m['cpu']:.4f} (overhead {100 * (1 - m['cpu']):+.2f} %);"
                    f" loop time outside KerTime {100 * m['accounted']:.2f} %"
                )


if __name__ == "__main__":
    main()
