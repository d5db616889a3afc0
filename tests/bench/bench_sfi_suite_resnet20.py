"""The benchmark suite's ResNet-20 list: this project's cached engine vs pytorchfi 0.6 on the same faults.

The suite's weights (ResNet20.th), its released fault list (ResNet20_FL.csv, 16,627 single-bit weight flips in
19 convolutions and the linear layer) and the 20 real CIFAR-10 test images of the foolbox wheel, normalised as
the suite does. The list is cut into blocks; on every block the engines take turns, in one process, one torch
thread: pytorchfi (declare_weight_fi: a model copy per fault, full forward), the cached engine in FP32 (the same
arithmetic as pytorchfi, so outcomes must agree), and the cached engine in the numerics map the published
outcomes imply (layer3.* in TF32, emulated on the CPU). Prints faults/s per engine (medians over blocks, the
median of per-block ratios), the wall time of each engine over all blocks, the agreement of pytorchfi and the
FP32 engine fault by fault and image by image, and the consistency of each with the published outcomes.
Prints numbers, asserts nothing.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
    PYTHONPATH=. python tests/bench/bench_sfi_suite_resnet20.py [--faults all|N] [--block 500] [--threads 1]

``--suite-dir`` is the folder with ResNet20.th and ResNet20_FL.csv (default: ../shared/data/dnn-benchmarks
beside the checkout, else tests/data/dnn-benchmarks); ``--images`` the foolbox data folder (default: the one
of the installed foolbox wheel).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def suite_dir() -> Path:
    for p in (ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data", ROOT / "tests" / "data"):
        if (p / "dnn-benchmarks" / "ResNet20.th").is_file():
            return p / "dnn-benchmarks"
    raise SystemExit("ResNet20.th not found: pass --suite-dir")


def foolbox_dir() -> Path:
    # the wheel is installed without its dependencies: find its data without importing it
    import importlib.util

    return Path(importlib.util.find_spec("torch").origin).parents[1] / "foolbox" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", default="all", help="'all' (16,627) or a seeded sample of N faults of the list")
    ap.add_argument("--block", type=int, default=500, help="faults per block (engines take turns per block)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suite-dir", type=Path)
    ap.add_argument("--images", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)  # pytorchfi logs every injection at INFO

    import pytorchfi
    from diehardlab.hardening.data import load_dataset
    from diehardlab.hardening.numerics import parse_numerics
    from diehardlab.hardening.sfi.bits import flip
    from diehardlab.hardening.sfi.compare import Side, compare
    from diehardlab.hardening.sfi.engine import Images, Injector, classify
    from diehardlab.hardening.sfi.faultlist import read_list
    from diehardlab.hardening.zoo import NORMALISATION, build
    from diehardlab.hardening.zoo.cli import read_weights
    from pytorchfi.core import fault_injection

    sdir = args.suite_dir or suite_dir()
    state, _ = read_weights(sdir / "ResNet20.th")
    model = build("cifar10/resnet20")
    model.load_state_dict(state)
    model.eval()
    ds = load_dataset("cifar10", "test", args.images or foolbox_dir(), NORMALISATION["cifar10"])
    x, y = ds.x, ds.y
    published = read_list(sdir / "ResNet20_FL.csv")
    faults = published.faults
    if args.faults != "all":
        keep = np.sort(np.random.default_rng(args.seed).choice(len(faults), int(args.faults), replace=False))
        faults = [faults[i] for i in keep]
    n = len(faults)

    # pytorchfi numbers the injectable layers in module order
    names = [nm for nm, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layer_num = {f"{nm}.weight": i for i, nm in enumerate(names)}
    params = dict(model.named_parameters())
    with torch.no_grad():
        golden = model(x)
    pfi = fault_injection(model, len(y), input_shape=[3, 32, 32], layer_types=[nn.Conv2d, nn.Linear], use_cuda=False)

    def run_pytorchfi(block):
        rows = []
        for f in block:
            value = flip(params[f.tensor][f.index].detach().clone(), f.bit).item()
            idx = [*f.index, None, None][:4]  # a linear weight is (k, c): pytorchfi indexes [k, c, None, None]
            corrupted = pfi.declare_weight_fi(
                layer_num=[layer_num[f.tensor]], k=[idx[0]], dim1=[idx[1]], dim2=[idx[2]], dim3=[idx[3]], value=[value]
            )
            with torch.no_grad():
                rows.append(classify(corrupted(x), golden))
        return torch.stack(rows).numpy()

    imgs = Images(x, y, [str(i) for i in range(len(y))])

    def injector(numerics: str) -> Injector:
        # each engine its own copy of the model: numerics are installed on the model's layers
        m = build("cifar10/resnet20")
        m.load_state_dict(state)
        return Injector(m.eval(), imgs, batch_size=len(y), engine="cached", numerics=parse_numerics(numerics))

    fp32, mapped = injector("fp32"), injector("layer3.*=tf32,*=fp32")
    engines = {
        "pytorchfi 0.6 declare_weight_fi (fp32)": run_pytorchfi,
        "diehardlab cached engine, fp32": fp32.run,
        "diehardlab cached engine, layer3.*=tf32": mapped.run,
    }
    rates: dict[str, list[float]] = {k: [] for k in engines}
    seconds: dict[str, float] = dict.fromkeys(engines, 0.0)
    outcomes: dict[str, list[np.ndarray]] = {k: [] for k in engines}
    order = np.random.default_rng(args.seed + 1).permutation(n)  # blocks mix layers as the whole list does
    blocks = [order[i : i + args.block] for i in range(0, n, args.block)]
    t_all = time.perf_counter()
    for b, idx in enumerate(blocks):
        block = [faults[i] for i in idx]
        for name, fn in engines.items():
            t0 = time.perf_counter()
            out = fn(block)
            dt = time.perf_counter() - t0
            seconds[name] += dt
            rates[name].append(len(block) / dt)
            outcomes[name].append(out)
        print(
            f"block {b + 1}/{len(blocks)}: "
            + ", ".join(f"{k.split(',')[-1].strip()} {v[-1]:.1f}/s" for k, v in rates.items()),
            flush=True,
        )
    inv = np.argsort(np.concatenate(blocks))
    full = {k: np.concatenate(v)[inv] for k, v in outcomes.items()}
    load = os.getloadavg()
    print(
        f"\nsuite ResNet-20 (ResNet20.th), {n:,} faults of ResNet20_FL.csv x {len(y)} foolbox CIFAR-10 images, "
        f"blocks of {args.block}, {args.threads} thread(s), torch {torch.__version__}, pytorchfi "
        f"{getattr(pytorchfi, '__version__', '0.6')}, {platform.processor() or platform.machine()}, "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
        f"total {time.perf_counter() - t_all:.0f} s"
    )
    ref = "pytorchfi 0.6 declare_weight_fi (fp32)"
    for name in engines:
        med = statistics.median(rates[name])
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates[ref]))
        counts = np.stack([(full[name] == k).sum(axis=1) for k in range(3)], axis=1)
        ours = Side(faults, counts, len(y), name)
        pub = Side(published.faults, published.counts[:, 1:], 10000, "published")
        c = compare(ours, pub)
        agree = float((full[name] == full[ref]).mean()) * 100
        print(
            f"{name:<42} {seconds[name]:8.1f} s  median {med:7.1f} faults/s  x{ratio:5.2f} vs pytorchfi  "
            f"same outcome as pytorchfi {agree:6.2f} % of (fault, image)  consistent with published "
            f"{100 * c.consistent.mean():6.2f} %"
        )


if __name__ == "__main__":
    main()
