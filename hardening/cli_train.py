"""``diehard train``: the command line of ``diehardlab.hardening.train``.

The config file is read (a binary, missing or folder path refused) and the output folder tested before torch
is imported, so these mistakes cost a fraction of a second; the config's fields are then checked by
``TrainConfig`` before the first epoch.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields, replace
from pathlib import Path

from diehardlab.cli import make_parser
from diehardlab.config import read_toml
from diehardlab.errors import ConfigError
from diehardlab.outfiles import check_out_dir


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "train",
        "Train a model (optionally fault-aware) into a checkpoint folder: config.json, model.pt, last.pt,\n"
        "metrics.csv. Example: diehard train --config setups/models/digits_diehardnet.toml --out ckpt/dhn",
    )
    p.add_argument("--config", help="model config TOML (setups/models/*.toml); optional with --resume")
    p.add_argument("--from", dest="from_ckpt", metavar="CKPT", help="start from this checkpoint's network and weights")
    p.add_argument("--fine-tune", action="store_true", help="with --from: fault-aware (curriculum, BN recal.)")
    p.add_argument("--lr", type=float, help="with --from: learning rate (default: the recipe's x 0.5)")
    p.add_argument("--dataset", help="override the config's dataset (digits, fashion-mnist, mnist, cifar10, cifar100)")
    p.add_argument("--data-dir", help="folder with the dataset files (fashion-mnist/mnist idx, cifar pickles)")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--seed", type=int, help="override the seed")
    p.add_argument("--train-limit", type=int, help="use only N training images (0: all)")
    p.add_argument("--device", help="auto (default: cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--out", help="checkpoint folder (default: runs/<name>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out from its last epoch")
    p.add_argument("--stop-after", type=int, default=0, help="stop this session after N epochs (resume later)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: on a tty)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0 (got {args.threads}; 0: torch's default)")
    if args.stop_after < 0:
        raise ConfigError(f"--stop-after must be >= 0 (got {args.stop_after}; 0: run every epoch)")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr must be a positive number (got {args.lr})")
    from_ckpt = args.from_ckpt or args.fine_tune or args.lr is not None
    if args.config is None and not from_ckpt and not (args.resume and args.out):
        p.error("--config is required (or --resume with --out to continue a saved run)")
    data = read_toml(args.config) if args.config else None
    if args.out:
        check_out_dir(args.out, "--out")  # a read-only or full folder, before the first epoch rather than after it

    # Only now the heavy part.
    import torch
    from diehardlab.hardening import checkpoint as ckpt
    from diehardlab.hardening.models import config_from_dict
    from diehardlab.hardening.train import TrainConfig, train

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if from_ckpt:
        from diehardlab.hardening.train import main_from

        return main_from(p, args)
    if data is not None:
        cfg = config_from_dict(TrainConfig, data, str(args.config))
    else:
        saved = ckpt.read_config(args.out)
        keep = {f.name for f in fields(TrainConfig)}
        cfg = config_from_dict(
            TrainConfig, {k: v for k, v in saved.items() if k in keep}, str(Path(args.out) / ckpt.CONFIG)
        )
    overrides = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_limit": args.train_limit,
        "device": args.device,
    }
    try:
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(f"command line: {exc}") from None
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-seed{cfg.seed}"
    if not args.out:
        check_out_dir(out, "--out")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    train(cfg, out, resume=args.resume, progress=progress, stop_after=args.stop_after)
    return 0
