"""One network's resilience across its number formats, and faults/s per format against pytorchfi 0.6.

The suite's ResNet-20 weights (ResNet20.th) and the 20 real CIFAR-10 test images of the foolbox wheel. ONE seeded
fault sample: ``--faults`` single-bit weight flips drawn uniformly over every (weight, bit) of the 19 convolutions
and the linear layer (float32 positions), run in every format with the same weight elements; a format narrower
than 32 bits takes bit ``b * width // 32`` (faultlist.to_width: the sign stays the sign, a uniform bit stays
uniform). fp32, tf32 and the autocast modes keep FP32 storage, so they run exactly the same faults.

Formats: fp32; tf32 (emulated on the CPU); float16 and bfloat16 (the model converted, ``--dtype``); autocast-fp16
and autocast-bf16 (FP32 weights, CUDA autocast's arithmetic emulated); int8 (torch.ao fbgemm static PTQ,
calibrated on the same 20 images, the faults on the int8 weight codes, per-channel scales untouched).

Speed: the sample is cut into blocks; on every block each engine takes its turn, in one process, one torch
thread: the cached engine per format, and pytorchfi (declare_weight_fi: a model copy per fault, full forward)
where it runs that format: fp32, and float16/bfloat16 with the model converted and its input cast. pytorchfi has
no TF32, autocast or int8 mode (on an int8 model its layer discovery finds no conv/linear weights; its issues
#74, #93); the script tries int8 and prints why it fails. Prints the outcome rates per format, faults/s per engine
(median over blocks), the median per-block ratio to pytorchfi in the same format, and the agreement of pytorchfi
and the cached engine fault by fault. Writes a JSON and (matplotlib) the plot. Prints numbers, asserts nothing.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
    PYTHONPATH=. python tests/bench/bench_sfi_formats.py [--faults 400] [--block 50] [--pfi16-blocks 1] \\
        [--json docs/sfi_formats.json] [--png docs/sfi_formats.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.bench.bench_sfi_suite_resnet20 import foolbox_dir, suite_dir

FORMATS = ["fp32", "tf32", "float16", "bfloat16", "autocast-fp16", "autocast-bf16", "int8"]


class Cast(nn.Module):
    """pytorchfi feeds float32 images: cast them to the converted model's format first."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        return self.model(x.to(self.dtype))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=400, help="size of the one seeded fault sample")
    ap.add_argument("--block", type=int, default=50, help="faults per block (engines take turns per block)")
    ap.add_argument(
        "--pfi16-blocks",
        type=int,
        default=1,
        help="last blocks on which pytorchfi runs float16/bfloat16 (its full 16-bit forward on the CPU is slow)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--suite-dir", type=Path)
    ap.add_argument("--images", type=Path)
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--png", type=Path, help="write the plot here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)  # pytorchfi logs every injection at INFO

    from diehardlab.hardening.data import load_dataset
    from diehardlab.hardening.formats import deploy
    from diehardlab.hardening.numerics import parse_numerics
    from diehardlab.hardening.sfi.bits import flip
    from diehardlab.hardening.sfi.engine import Images, Injector, classify
    from diehardlab.hardening.sfi.faultlist import draw_uniform, to_width
    from diehardlab.hardening.sfi.targets import stored_tensors
    from diehardlab.hardening.zoo import NORMALISATION, build
    from diehardlab.hardening.zoo.cli import read_weights
    from pytorchfi.core import fault_injection

    state, _ = read_weights((args.suite_dir or suite_dir()) / "ResNet20.th")

    def fresh() -> nn.Module:
        m = build("cifar10/resnet20")
        m.load_state_dict(state)
        return m.eval()

    ds = load_dataset("cifar10", "test", args.images or foolbox_dir(), NORMALISATION["cifar10"])
    x, y = ds.x, ds.y
    imgs = Images(x, y, [str(i) for i in range(len(y))])
    float_model = fresh()
    weights = [
        (n, tuple(p.shape), 32) for n, p in float_model.named_parameters() if n.endswith(".weight") and p.dim() > 1
    ]
    sample = draw_uniform(weights, args.faults, "bitflip", args.seed)

    engines: dict[str, callable] = {}
    faults_of: dict[str, list] = {}
    golden_acc: dict[str, float] = {}
    pfi_note: dict[str, str] = {}
    formats = args.formats.split(",")
    for fmt in formats:
        dtype = fmt if fmt in ("float16", "bfloat16") else "float32"
        dep = deploy(fresh(), dtype, "int8" if fmt == "int8" else None, x, "cpu")
        policy = parse_numerics(fmt if fmt in ("tf32", "autocast-fp16", "autocast-bf16") else "fp32")
        inj = Injector(dep.model, imgs, batch_size=len(y), numerics=policy, input_dtype=dep.input_dtype)
        widths = {n: s.fmt.width for n, s in stored_tensors(dep.model).items()}
        faults_of[fmt] = to_width(sample, widths)
        golden_acc[fmt] = float((inj.golden[0].argmax(1) == y).float().mean())
        engines[f"diehardlab {fmt}"] = (fmt, inj.run)
        if fmt in ("fp32", "float16", "bfloat16", "int8"):
            try:
                engines[f"pytorchfi {fmt}"] = (fmt, _pytorchfi(fmt, dep, x, fault_injection, flip, classify))
            except Exception as exc:  # pytorchfi fails in many ways on models it was not written for
                pfi_note[fmt] = f"{type(exc).__name__}: {(str(exc).splitlines() or ['(no message)'])[0][:160]}"
                print(f"pytorchfi 0.6 cannot run {fmt}: {pfi_note[fmt]}", flush=True)

    rates: dict[str, list[float]] = {k: [] for k in engines}
    outcomes: dict[str, list[np.ndarray]] = {k: [] for k in engines}
    n = len(sample)
    order = np.random.default_rng(args.seed + 1).permutation(n)
    blocks = [order[i : i + args.block] for i in range(0, n, args.block)]
    t_all = time.perf_counter()
    for b, idx in enumerate(blocks):
        for name, (fmt, fn) in engines.items():
            # pytorchfi's 16-bit runs on the last blocks only: by then every engine is past its one-time setup
            # (the cached engine's golden cache and per-layer checks), so the ratio is the steady state
            if name.startswith("pytorchfi") and fmt in ("float16", "bfloat16") and b < len(blocks) - args.pfi16_blocks:
                continue
            block = [faults_of[fmt][i] for i in idx]
            t0 = time.perf_counter()
            out = fn(block)
            rates[name].append(len(block) / (time.perf_counter() - t0))
            outcomes[name].append(out)
        ran = [f"{k} {v[-1]:.1f}/s" for k, v in rates.items() if len(v) and len(outcomes[k]) and v is not None]
        print(f"block {b + 1}/{len(blocks)}: " + ", ".join(ran), flush=True)
    # per engine, the outcomes of the blocks it ran, in block order (pytorchfi 16-bit: the last blocks only)
    done = {k: np.concatenate(v) for k, v in outcomes.items()}
    order_all = np.concatenate(blocks)
    full = {k: v[np.argsort(order_all)] for k, v in done.items() if len(v) == n}
    load = os.getloadavg()
    head = (
        f"suite ResNet-20 (ResNet20.th), one sample of {n:,} weight bit flips (seed {args.seed}) x {len(y)} foolbox "
        f"CIFAR-10 images, blocks of {args.block}, {args.threads} thread(s), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}, total {time.perf_counter() - t_all:.0f} s"
    )
    print("\n" + head)
    print(f"{'format':<14} {'golden acc':>10} {'Masked %':>9} {'Non-crit. %':>11} {'SDC-1 %':>8} {'faults/s':>9}")
    table = {}
    for fmt in formats:
        o = full[f"diehardlab {fmt}"]
        row = {
            "golden_accuracy_pct": 100 * golden_acc[fmt],
            "masked_pct": 100 * float((o == 0).mean()),
            "non_critical_pct": 100 * float((o == 1).mean()),
            "sdc1_pct": 100 * float((o == 2).mean()),
            "faults_with_sdc1": int((o == 2).any(axis=1).sum()),
            "faults_per_s_median": statistics.median(rates[f"diehardlab {fmt}"]),
        }
        pfi = f"pytorchfi {fmt}"
        if pfi in engines:
            k = len(rates[pfi])  # the blocks pytorchfi ran (the last k)
            row["pytorchfi_blocks"] = k
            row["pytorchfi_faults_per_s_median"] = statistics.median(rates[pfi])
            row["ratio_vs_pytorchfi_median"] = statistics.median(
                a / b for a, b in zip(rates[f"diehardlab {fmt}"][-k:], rates[pfi])
            )
            ours = done[f"diehardlab {fmt}"][len(done[f"diehardlab {fmt}"]) - len(done[pfi]) :]
            row["same_outcome_as_pytorchfi_pct"] = 100 * float((done[pfi] == ours).mean())
        elif fmt in pfi_note:
            row["pytorchfi"] = pfi_note[fmt]
        table[fmt] = row
        print(
            f"{fmt:<14} {row['golden_accuracy_pct']:>10.2f} {row['masked_pct']:>9.2f} {row['non_critical_pct']:>11.2f} "
            f"{row['sdc1_pct']:>8.2f} {row['faults_per_s_median']:>9.1f}"
            + (
                f"   pytorchfi {row['pytorchfi_faults_per_s_median']:.1f}/s, x{row['ratio_vs_pytorchfi_median']:.2f} "
                f"(median of {row['pytorchfi_blocks']} blocks), same outcome "
                f"{row['same_outcome_as_pytorchfi_pct']:.2f} % of (fault, image)"
                if "ratio_vs_pytorchfi_median" in row
                else ("   pytorchfi: " + row["pytorchfi"] if "pytorchfi" in row else "   pytorchfi: no such mode")
            )
        )
    if args.json:
        args.json.write_text(json.dumps({"run": head, "formats": table}, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.png:
        _plot(table, head, args.png)
        print(f"wrote {args.png}")


def _pytorchfi(fmt, dep, x, fault_injection, flip, classify):
    """pytorchfi 0.6 on the deployed model: declare_weight_fi writes the faulty value (the flipped stored value,
    as a Python float, exact in every float format) into a model copy, then a full forward."""
    model = dep.model
    if dep.input_dtype is not None:
        model = Cast(model, dep.input_dtype)
    if next(iter(model.parameters()), None) is None:
        # what pytorchfi hits (its core.py: next(model.parameters()) raises StopIteration), said in words
        raise RuntimeError(
            f"the {fmt} model has no torch parameters (torch.ao keeps its weights packed); pytorchfi 0.6's "
            "fault_injection() starts with next(model.parameters()) and stops with StopIteration"
        )
    with torch.no_grad():
        golden = model(x)
    pfi = fault_injection(
        model, x.shape[0], input_shape=[3, 32, 32], layer_types=[nn.Conv2d, nn.Linear], use_cuda=False
    )
    names = [nm for nm, m in dep.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not names:
        raise RuntimeError(f"the {fmt} model has no nn.Conv2d/nn.Linear layer for pytorchfi to inject into")
    layer_num = {f"{nm}.weight": i for i, nm in enumerate(names)}
    params = dict(dep.model.named_parameters())

    def run(block):
        rows = []
        for f in block:
            value = flip(params[f.tensor][f.index].detach().clone(), f.bit).item()
            idx = [*f.index, None, None][:4]
            corrupted = pfi.declare_weight_fi(
                layer_num=[layer_num[f.tensor]], k=[idx[0]], dim1=[idx[1]], dim2=[idx[2]], dim3=[idx[3]], value=[value]
            )
            with torch.no_grad():
                rows.append(classify(corrupted(x), golden))
        return torch.stack(rows).numpy()

    return run


def _plot(table: dict, head: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmts = list(table)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    bottom = np.zeros(len(fmts))
    for key, label, colour in (
        ("masked_pct", "Masked", "#4c9f70"),
        ("non_critical_pct", "Non-critical", "#f2c14e"),
        ("sdc1_pct", "SDC-1", "#d1495b"),
    ):
        vals = np.array([table[f][key] for f in fmts])
        ax.bar(fmts, vals, bottom=bottom, label=label, color=colour)
        bottom += vals
    ax.set_ylabel("% of (fault, image) inferences")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    ax.set_title("ResNet-20 (suite weights), one weight-fault sample", fontsize=9)
    sdc = [table[f]["sdc1_pct"] for f in fmts]
    ax2.bar(fmts, sdc, color="#d1495b")
    for i, v in enumerate(sdc):
        ax2.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax2.set_ylabel("SDC-1 % of inferences")
    ax2.tick_params(axis="x", rotation=30)
    ax2.set_title("SDC-1 per format", fontsize=9)
    fig.suptitle(head[:150] + ("..." if len(head) > 150 else ""), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
