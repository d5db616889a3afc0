"""Data-efficient workload selection: do ranked images find the critical faults with fewer images?

On the trained CIFAR-10 LeNet of the mrfi wheel with the 20 CIFAR-10 images of the foolbox wheel (and, with
``--ckpt``, on a checkpoint of 'diehard train' with its first ``--images`` test images): rank the images by
EL2N, DeepGini and cross-entropy, run one statistical fault-injection campaign (network-wise sample, bit flips)
on all of them, and print the fault detection curve of each ranking against the mean of 5 random orders:
critical (SDC-1) faults found with the first k images. Prints numbers, asserts nothing.

    PYTHONPATH=. python tests/bench/bench_sfi_selection.py [--out DIR] [--ckpt DIR --images 100 --error 0.03]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

import torch

from diehardlab.cli import main as diehard


def _diehard(argv: list[str]) -> None:
    code = diehard(argv)
    if code != 0:
        raise SystemExit(f"diehard {' '.join(argv[:2])} failed with exit status {code}")


def experiment(name: str, model_args: list[str], out: Path, error: float, images: list[str]) -> None:
    for metric in ("el2n", "deepgini", "ce"):
        _diehard(["select", *model_args, *images, "--metric", metric, "--out", str(out / f"{metric}.csv")])
    run = out / "run"
    _diehard(
        [
            "sfi",
            "run",
            *model_args,
            "--selection",
            str(out / "el2n.csv"),
            *images,
            "--method",
            "network",
            "--fault-model",
            "bitflip",
            "--error",
            str(error),
            "--batch-size",
            "100",
            "--out",
            str(run),
        ]
    )
    from diehardlab.hardening.sfi.curve import curve_from_run

    print(f"\n{name}: critical faults found with the first k images, ranked vs mean±std of 5 random orders")
    for metric in ("el2n", "deepgini", "ce"):
        res = curve_from_run(run, 5, 0, out / f"curve_{metric}", out / f"{metric}.csv")
        s = res["summary"]
        marks = " ".join(
            f"k={k}: {v['ranked']} vs {v['random_mean']:.1f}±{v['random_std']:.1f}" for k, v in s["critical_at"].items()
        )
        print(f"  {metric:<8} {marks} | area ratio {s['area_ratio_critical']:.3f}")
    summary = json.loads((run / "summary.json").read_text())
    print(f"  {summary['faults']} faults x {summary['images']} images; SDC-1 faults {summary['sdc1']}; plots in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="where to keep the runs (default: a temporary folder)")
    ap.add_argument("--error", type=float, default=0.01, help="error margin of the LeNet campaign (default 0.01)")
    ap.add_argument("--ckpt", type=Path, help="also run on this checkpoint folder")
    ap.add_argument("--images", type=int, default=100, help="test images of --ckpt (default 100)")
    ap.add_argument("--ckpt-error", type=float, default=0.03)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="sfi-selection-"))
    site = Path(importlib.util.find_spec("torch").origin).parents[1]
    lenet = [
        "--factory",
        "diehardlab.hardening.sfi.zoo:LeNet5",
        "--weights",
        str(site / "mrfi_dataset" / "lenet_cifar10.pth"),
        "--image-dir",
        str(site / "foolbox" / "data"),
        "--image-glob",
        "cifar10_*.png",
        "--mean",
        "0.5",
        "--std",
        "0.5",
    ]
    experiment("mrfi CIFAR-10 LeNet, 20 foolbox CIFAR-10 images", lenet, out / "lenet", args.error, [])
    if args.ckpt:
        experiment(
            f"checkpoint {args.ckpt}, first {args.images} test images",
            [str(args.ckpt)],
            out / "ckpt",
            args.ckpt_error,
            ["--images", str(args.images)],
        )


if __name__ == "__main__":
    main()
