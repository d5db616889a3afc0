"""Epoch time of fault-aware training (one corrupted conv per forward) against the same training without it.

Both runs share the process, the data and the recipe; their epochs alternate (plain, injected, injected, plain,
...) so machine load drifts hit both alike, and the overhead is the median of the per-pair ratios. BN
recalibration (a separate forward pass over ``bn_recalibrate`` clean images) is timed on its own, since its
share depends on the epoch size and not on the injection.

    # CPU, fashion-mnist smallnet (the scaled-down DieHardNet recipe)
    python tests/bench/bench_hardening_injection_overhead.py --config setups/models/fashion-mnist_diehardnet.toml \
        --images 8192 --pairs 5 --threads 1
    # GPU, the paper's ResNet-44 on CIFAR-shaped inputs (random data: only time is measured)
    python tests/bench/bench_hardening_injection_overhead.py --config setups/models/cifar10_resnet44_diehardnet.toml \
        --synthetic --images 25600 --pairs 5

Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
from diehardlab.hardening.data import load_dataset
from diehardlab.hardening.train import load_config, make_state, recalibrate_bn, train_one_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="setups/models/fashion-mnist_diehardnet.toml")
    ap.add_argument("--images", type=int, default=8192, help="training images per epoch")
    ap.add_argument("--pairs", type=int, default=5, help="timed (plain, injected) epoch pairs after one warm-up pair")
    ap.add_argument("--synthetic", action="store_true", help="random inputs of the dataset's shape (no data files)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = replace(load_config(args.config), device=args.device, epochs=1000)
    shapes = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "digits": (1, 8, 10)}
    if args.synthetic:
        c, s, k = shapes.get(cfg.dataset, (1, 28, 10))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.images, c, s, s, generator=g)
        y = torch.randint(0, k, (args.images,), generator=g)
    else:
        ds = load_dataset(cfg.dataset, "train", cfg.data_dir or None)
        x, y, c, k = ds.x[: args.images], ds.y[: args.images], ds.info.in_channels, ds.info.num_classes
    plain_cfg = replace(cfg, fault_aware=False, bn_recalibrate=0)
    inj_cfg = replace(cfg, fault_aware=True, bn_recalibrate=0)
    steps = -(-len(y) // cfg.batch_size)
    plain = make_state(plain_cfg, c, k, steps)
    inj = make_state(inj_cfg, c, k, steps)
    dev = plain.device
    x, y = x.to(dev), y.to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # On a CPU, the process's CPU time is also reported: it does not count the time other processes hold the
    # cores, which dominates wall-clock noise on a shared machine.
    cpu_times: dict[int, list[float]] = {id(plain): [], id(inj): []}

    def epoch(state, run_cfg) -> float:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        train_one_epoch(state, x, y, run_cfg)
        sync()
        state.epoch += 1
        cpu_times[id(state)].append(time.process_time() - c0)
        return time.perf_counter() - t0

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"config {args.config}: {cfg.model.arch} width {cfg.model.width}, {cfg.dataset}"
        f"{' (synthetic)' if args.synthetic else ''}, {len(y)} images/epoch, batch {cfg.batch_size}, "
        f"faults {cfg.faults.kind} p={cfg.faults.p}, device {dev} ({name}), torch {torch.__version__}"
    )
    epoch(plain, plain_cfg)  # warm-up: allocator, kernels, caches
    epoch(inj, inj_cfg)
    for v in cpu_times.values():
        v.clear()
    ratios, tp, ti = [], [], []
    for i in range(args.pairs):
        if i % 2 == 0:
            a = epoch(plain, plain_cfg)
            b = epoch(inj, inj_cfg)
        else:
            b = epoch(inj, inj_cfg)
            a = epoch(plain, plain_cfg)
        tp.append(a)
        ti.append(b)
        ratios.append(b / a)
        cpu_p, cpu_i = cpu_times[id(plain)][-1], cpu_times[id(inj)][-1]
        print(
            f"pair {i + 1}: plain {a:.3f} s  injected {b:.3f} s  ratio {b / a:.4f}"
            f"   (CPU time {cpu_p:.3f} s / {cpu_i:.3f} s, ratio {cpu_i / cpu_p:.4f})"
        )
    med = statistics.median(ratios)
    print(
        f"median epoch time: plain {statistics.median(tp):.3f} s, fault-aware injection {statistics.median(ti):.3f} s; "
        f"median ratio {med:.4f} -> overhead {100 * (med - 1):+.1f} % (target <= 5 %; paper: up to 30 %)"
    )
    if dev.type == "cpu":
        cpu_ratio = statistics.median(i / p for p, i in zip(cpu_times[id(plain)], cpu_times[id(inj)]))
        print(f"median ratio of process CPU time {cpu_ratio:.4f} -> overhead {100 * (cpu_ratio - 1):+.1f} %")
    if cfg.bn_recalibrate:
        n = min(cfg.bn_recalibrate, len(y))
        times = []
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            recalibrate_bn(inj.model, x[:n], cfg)
            sync()
            times.append(time.perf_counter() - t0)
        rec = statistics.median(times)
        print(
            f"BN recalibration on {n} clean images: {rec:.3f} s = {100 * rec / statistics.median(tp):.1f} % of a "
            f"{len(y)}-image plain epoch (scales as {n} / epoch size)"
        )


if __name__ == "__main__":
    main()
