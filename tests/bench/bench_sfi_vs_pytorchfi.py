"""Faults per second: this project's SFI engine vs pytorchfi 0.6 vs a plain in-place-flip full-forward loop.

Same ResNet-20 (CIFAR-10 shape, parameter-free shortcuts, 268,346 weights), same batch of 32 CIFAR-shaped
inputs, same seeded list of single-bit weight flips in the conv layers (pytorchfi's declare_weight_fi indexes
4-D conv weights), in one process. The engines take turns in rounds on the same faults; the script prints each
engine's faults/s per round, the medians, the median of the per-round ratios and the outcome agreement
(Masked / Non-critical / SDC-1 per fault and image). Prints numbers, asserts nothing.

    PYTHONPATH=. python tests/bench/bench_sfi_vs_pytorchfi.py [--rounds 5] [--faults-per-round 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--faults-per-round", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable numbers on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)  # pytorchfi logs every injection at INFO

    import pytorchfi
    from diehardlab.hardening.models import ModelConfig, build_model
    from diehardlab.hardening.sfi.bits import flip
    from diehardlab.hardening.sfi.engine import Images, Injector, classify
    from diehardlab.hardening.sfi.faultlist import draw
    from diehardlab.hardening.sfi.plan import make_plan
    from pytorchfi.core import fault_injection

    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(arch="resnet20", shortcut="pad"), 3, 10).eval()
    # trained-like batch-norm statistics, so outputs are not degenerate
    g = torch.Generator().manual_seed(args.seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.5)
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    y = torch.zeros(args.batch, dtype=torch.int64)
    n_faults = args.rounds * args.faults_per_round
    plan = make_plan(model, "network", fault_model="bitflip")
    faults = [f for f in draw(plan, args.seed) if f.tensor.endswith(".weight") and len(f.index) == 4]
    rng = np.random.default_rng(args.seed)
    faults = [faults[i] for i in sorted(rng.choice(len(faults), n_faults, replace=False))]
    rng.shuffle(faults)
    conv_names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    layer_num = {f"{n}.weight": i for i, n in enumerate(conv_names)}
    params = dict(model.named_parameters())

    with torch.no_grad():
        golden = model(x)
    pfi = fault_injection(model, args.batch, input_shape=[3, 32, 32], layer_types=[nn.Conv2d], use_cuda=False)

    def run_pytorchfi(block):
        rows = []
        for f in block:
            value = flip(params[f.tensor][f.index].detach().clone(), f.bit).item()
            k, c, h, w = f.index
            corrupted = pfi.declare_weight_fi(
                layer_num=[layer_num[f.tensor]], k=[k], dim1=[c], dim2=[h], dim3=[w], value=[value]
            )
            with torch.no_grad():
                rows.append(classify(corrupted(x), golden))
        return torch.stack(rows).numpy()

    imgs = Images(x, y, [str(i) for i in range(args.batch)])
    cached = Injector(model, imgs, batch_size=args.batch, engine="cached")
    naive = Injector(model, imgs, batch_size=args.batch, engine="naive")
    engines = {
        "pytorchfi 0.6 declare_weight_fi": run_pytorchfi,
        "plain in-place flip, full forward": naive.run,
        "diehardlab cached engine": cached.run,
    }
    rates: dict[str, list[float]] = {k: [] for k in engines}
    outcomes: dict[str, list[np.ndarray]] = {k: [] for k in engines}
    for r in range(args.rounds):
        block = faults[r * args.faults_per_round : (r + 1) * args.faults_per_round]
        for name, fn in engines.items():
            t0 = time.perf_counter()
            out = fn(block)
            dt = time.perf_counter() - t0
            rates[name].append(len(block) / dt)
            outcomes[name].append(out)
        print(f"round {r + 1}: " + ", ".join(f"{k.split()[0]} {v[-1]:.1f}/s" for k, v in rates.items()), flush=True)

    print(
        f"\nResNet-20 (pad shortcut, 268,346 weights), batch {args.batch}, {n_faults} single-bit conv weight flips, "
        f"{args.rounds} rounds, torch {torch.__version__}, pytorchfi {getattr(pytorchfi, '__version__', '0.6')}, "
        f"{args.threads} thread(s)"
    )
    ref_name = "pytorchfi 0.6 declare_weight_fi"
    ref = np.concatenate(outcomes[ref_name])
    counts = np.bincount(ref.max(axis=1), minlength=3)
    print(f"outcomes (worst per fault, pytorchfi): masked {counts[0]}, non-critical {counts[1]}, SDC-1 {counts[2]}")
    for name in engines:
        med = statistics.median(rates[name])
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates[ref_name]))
        agree = float((np.concatenate(outcomes[name]) == ref).mean()) * 100
        print(f"{name:<36} median {med:8.1f} faults/s   x{ratio:5.2f} vs pytorchfi   agreement {agree:.2f} %")


if __name__ == "__main__":
    main()
