"""``diehard harden CKPT --recipe RECIPE --out CKPT2``: the DieHardNet changes applied to a trained model.

Steps: load the checkpoint; measure its clean accuracy; rewrite its graph with the recipe
(``diehardlab.hardening.rewrite``); with order inversion, re-estimate the BN statistics on the calibration
images (each inverted BN now normalises activations, not conv outputs); calibrate the per-site bounds; with
``--fine-tune N``, fault-aware fine-tuning for N epochs (``diehard train --from``); write the
checkpoint folder under a temporary name, load it back with ``load_model`` (the bounds-only model must
reproduce the in-memory one bit for bit), measure its clean accuracy on the same images, and rename it to
``--out`` only when the accuracy lost is within ``--accuracy-budget``. Over budget, nothing is written to
``--out``: the command says so loudly, keeps the result as ``OUT.over-budget`` for inspection and exits 2.

Images: calibration on ``--calibration-images`` images of the checkpoint's dataset (a seeded subset of the
``--calibration-split``, train by default), accuracy on its test split; or, with ``--image-dir``, the first
``--calibration-images`` files calibrate and the others measure (said in the report).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diehardlab.hardening import checkpoint as ckpt
from diehardlab.hardening.rewrite import Hardened, calibrate, harden, load_recipe
from diehardlab.hardening.train import TrainConfig, pick_device, predict, recalibrate_bn, top1

from diehardlab.errors import ConfigError, DataError
from diehardlab.outfiles import cannot_write, check_out_dir

REPORT = "hardening.txt"


@dataclass
class Images:
    calibration: torch.Tensor
    measure_x: torch.Tensor
    measure_y: torch.Tensor
    calibration_from: str
    measure_from: str


def _images(args: argparse.Namespace, loaded: ckpt.LoadedModel) -> Images:
    n = args.calibration_images
    if n < 1:
        raise ConfigError(f"--calibration-images must be >= 1 (got {n})")
    if args.image_dir:
        from diehardlab.hardening.sfi.sources import image_dir_images

        glob = args.image_glob or "*.png"
        imgs = image_dir_images(args.image_dir, glob, args.mean, args.std, loaded.dataset, loaded.config)
        if len(imgs.y) <= n:
            raise ConfigError(
                f"--image-dir {args.image_dir}: {len(imgs.y)} images; --calibration-images {n} leaves none to "
                "measure the accuracy on (the first N calibrate, the others measure)"
            )
        return Images(
            imgs.x[:n],
            imgs.x[n:],
            imgs.y[n:],
            f"the first {n} files of {args.image_dir} ({imgs.ids[0]} .. {imgs.ids[n - 1]})",
            f"the other {len(imgs.y) - n} files of {args.image_dir}",
        )
    from diehardlab.hardening.data import fixed_normalisation, labelled_image_files, load_dataset

    data_dir = args.data_dir or loaded.config.get("data_dir") or None
    if data_dir and labelled_image_files(Path(data_dir), loaded.dataset):
        raise ConfigError(
            f"--data-dir {data_dir}: a folder of labelled {loaded.dataset} images has no training split to calibrate "
            f"on; give it as --image-dir {data_dir} (the first --calibration-images files calibrate, the others "
            "measure)"
        )
    # The checkpoint's own normalisation: the suite's fixed constants for a 'diehard zoo import' checkpoint.
    norm = fixed_normalisation(loaded.config)
    cal = load_dataset(loaded.dataset, args.calibration_split, data_dir, norm)
    if n > len(cal):
        raise ConfigError(f"--calibration-images {n}: the {args.calibration_split} split has only {len(cal)} images")
    idx = torch.randperm(len(cal), generator=torch.Generator().manual_seed(args.seed))[:n].sort().values
    test = load_dataset(loaded.dataset, "test", data_dir, norm)
    return Images(
        cal.x[idx],
        test.x,
        test.y,
        f"{n} images of the {args.calibration_split} split of {loaded.dataset} (seed {args.seed})",
        f"the {len(test)} images of the test split of {loaded.dataset}",
    )


def _batches(x: torch.Tensor, device: torch.device, size: int = 256) -> list[torch.Tensor]:
    return [x[i : i + size].to(device) for i in range(0, len(x), size)]


@torch.no_grad()
def clean_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, Any]:
    logits = predict(model, x.to(device), 512).cpu()
    pred = top1(logits)
    labelled = y >= 0
    acc = float((pred[labelled] == y[labelled]).float().mean()) if bool(labelled.any()) else math.nan
    return {"accuracy": acc, "images": len(y), "labelled": int(labelled.sum()), "logits": logits, "top1": pred}


def _counts(h: Hardened) -> str:
    def n(kind: str, action: str) -> int:
        return sum(1 for c in h.changes if c.kind == kind and c.action == action)

    parts = [f"{n('activation', 'bounded')} activations bounded ({n('activation', 'skipped')} skipped)"]
    if h.recipe.nan_filter:
        filters = n("nan-filter", "inserted") + n("classifier", "inserted")
        parts.append(f"{filters} NaN filters")
    if h.recipe.order_inversion:
        parts.append(f"{n('order', 'inverted')} conv->BN->act inverted ({n('order', 'skipped')} BN skipped)")
    return ", ".join(parts)


def _loud(lines: list[str]) -> None:
    bar = "!" * 100
    print("\n".join([bar, *lines, bar]), file=sys.stderr, flush=True)


def _fine_tune(args: argparse.Namespace, loaded: ckpt.LoadedModel, h: Hardened, tmp: Path) -> dict[str, Any]:
    from diehardlab.hardening.train import from_checkpoint, load_config, train

    recipe = load_config(args.config) if args.config else None
    hardened = ckpt.LoadedModel(h.model, loaded.config, loaded.dataset, loaded.in_channels, loaded.num_classes,
                                loaded.model_hash, loaded.path)  # fmt: skip
    cfg, start = from_checkpoint(hardened, args.fine_tune, True, recipe, args.lr, {"hardening": h.record()})
    overrides = {"seed": args.seed, "device": args.device, "data_dir": args.data_dir}
    name = f"{loaded.config.get('name', 'model')}+{h.recipe.name}-ft{args.fine_tune}"
    cfg = replace(cfg, name=name, **{k: v for k, v in overrides.items() if v is not None})
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    print(
        f"fault-aware fine-tuning: {cfg.epochs} epochs, lr {cfg.lr:g}, faults {cfg.faults.kind}, "
        f"BN recalibration on {cfg.bn_recalibrate} images"
    )
    return train(cfg, tmp, progress=progress, start=start)


def run(args: argparse.Namespace) -> int:
    recipe, recipe_file = load_recipe(args.recipe)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder; choose a new one")
    if args.fine_tune < 0:
        raise ConfigError(f"--fine-tune must be >= 0 epochs (got {args.fine_tune})")
    if recipe.changes_function and not args.fine_tune:
        what = "inverts conv -> BN -> act into conv -> act -> BN" if recipe.order_inversion else "replaces ReLU by GELU"
        raise ConfigError(
            f"recipe {recipe.name} {what}, which changes what the trained weights compute: it is offered only "
            "together with fine-tuning. Add --fine-tune EPOCHS (fault-aware, e.g. 2), or use --recipe bounds-only"
        )
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr must be a positive number (got {args.lr})")
    for option, value in (("--lr", args.lr), ("--config", args.config)):
        if value is not None and not args.fine_tune:
            raise ConfigError(f"{option} sets the fine-tuning: add --fine-tune EPOCHS, or leave {option} out")
    given = [o for o, v in (("--image-glob", args.image_glob), ("--mean", args.mean), ("--std", args.std)) if v]
    if given and not args.image_dir:  # they were ignored without a word
        raise ConfigError(f"{', '.join(given)}: only with --image-dir FOLDER")
    if args.fine_tune and args.image_dir:
        raise ConfigError("--fine-tune trains on the checkpoint's dataset; leave out --image-dir")
    if args.budget < 0 or not math.isfinite(args.budget):
        raise ConfigError(f"--accuracy-budget must be a number of points >= 0 (got {args.budget})")
    # --out's folder (where the temporary and the over-budget folders go too), before the calibration and the
    # fine-tuning rather than after them.
    check_out_dir(out, "--out")
    dev = pick_device(args.device)
    loaded = ckpt.load_model(args.ckpt, dev)
    if loaded.config.get("hardening"):
        name = loaded.config["hardening"].get("recipe", {}).get("name", "?")
        raise ConfigError(f"{args.ckpt}: hardened already (recipe {name}); harden the original checkpoint")
    h = harden(loaded.model, recipe)  # first: an untraceable model is refused before any data is read
    h.model.to(dev).eval()
    imgs = _images(args, loaded)
    # The original's accuracy before anything runs the rewritten graph: it shares the original's modules, and
    # the BN re-estimation below changes them.
    before = clean_accuracy(loaded.model, imgs.measure_x, imgs.measure_y, dev)
    print(f"harden {args.ckpt} with recipe {recipe.name} ({recipe_file}) -> {out}")

    cal = _batches(imgs.calibration, dev)
    if h.inverted:
        # Each inverted BN was fitted to conv outputs and now sees activations: its statistics are re-estimated
        # on the calibration images (before the bounds are calibrated: every later layer's input depends on them).
        recalibrate_bn(h.model, imgs.calibration.to(dev), TrainConfig(batch_size=256, channels_last=False, amp=False))
        h.model.eval()
    stats = calibrate(h, cal, len(imgs.calibration)) if recipe.bound == "percentile" else {}
    for c in h.changes:
        print("  " + c.line())
    print(f"  {_counts(h)}")

    try:
        return _write(args, recipe_file, loaded, h, imgs, before, stats, dev)
    except OSError as exc:
        shutil.rmtree(_tmp(out), ignore_errors=True)  # a half-written checkpoint folder must not stay behind
        raise cannot_write("--out", out, exc) from None


def _tmp(out: Path) -> Path:
    return out.with_name(out.name + ".tmp-harden")


def _write(
    args: argparse.Namespace,
    recipe_file: str,
    loaded: ckpt.LoadedModel,
    h: Hardened,
    imgs: Images,
    before: dict[str, Any],
    stats: dict[str, Any],
    dev: torch.device,
) -> int:
    """Fine-tune if asked, write under a temporary name, load back, check the accuracy budget, rename."""
    recipe, out = h.recipe, Path(args.out)
    tmp = _tmp(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    record = h.record()
    if args.fine_tune:
        _fine_tune(args, loaded, h, tmp)
        config = ckpt.read_config(tmp)
    else:
        config = {**loaded.config, "name": f"{loaded.config.get('name', 'model')}+{recipe.name}", "hardening": record}
        ckpt.save_config(tmp, config)
        ckpt.save_model(tmp, h.model)

    reloaded = ckpt.load_model(tmp, dev)
    after = clean_accuracy(reloaded.model, imgs.measure_x, imgs.measure_y, dev)
    if not args.fine_tune:
        mine = predict(h.model, imgs.measure_x.to(dev), 512).cpu()
        if not torch.equal(mine, after["logits"]):
            raise DataError(f"{tmp}: the model rebuilt from the checkpoint does not reproduce the hardened one")
    agree = float((after["top1"] == before["top1"]).float().mean())
    drop = 100.0 * (before["accuracy"] - after["accuracy"]) if before["labelled"] else 100.0 * (1.0 - agree)
    measure = "accuracy" if before["labelled"] else "top-1 agreement with the original (no labels)"
    config["hardening"] = {
        **config["hardening"],
        "recipe_file": recipe_file,
        "source": {"checkpoint": str(args.ckpt), "model_sha256": loaded.model_hash},
        "calibration": {"images": len(imgs.calibration), "from": imgs.calibration_from, "bounds": stats},
        "fine_tune_epochs": args.fine_tune,
        "clean": {
            "measured_on": imgs.measure_from,
            "images": before["images"],
            "accuracy_before": before["accuracy"],
            "accuracy_after": after["accuracy"],
            "top1_agreement": agree,
            "cost_points": drop,
            "budget_points": args.budget,
            "within_budget": drop <= args.budget,
        },
    }
    ckpt.save_config(tmp, config)
    summary = (
        f"clean {measure} {_pct(before['accuracy'])} -> {_pct(after['accuracy'])} "
        f"({-drop:+.2f} points) on {imgs.measure_from}; top-1 agreement {100 * agree:.2f} %; "
        f"calibration: {imgs.calibration_from}"
    )
    (tmp / REPORT).write_text(
        f"diehard harden {args.ckpt} --recipe {recipe.name}"
        f"{f' --fine-tune {args.fine_tune}' if args.fine_tune else ''}\n"
        + "\n".join(c.line() for c in h.changes)
        + f"\n{_counts(h)}\n{summary}\n"
    )
    if drop > args.budget:
        rejected = out.with_name(out.name + ".over-budget")
        if rejected.exists():
            shutil.rmtree(rejected)
        tmp.rename(rejected)
        _loud([
            f"ACCURACY BUDGET EXCEEDED: recipe {recipe.name} costs {drop:.2f} points of clean {measure}, "
            f"more than --accuracy-budget {args.budget:g}.",
            summary,
            f"NOTHING WAS WRITTEN TO {out}. The hardened checkpoint is kept in {rejected} for inspection.",
        ])  # fmt: skip
        raise ConfigError(
            f"recipe {recipe.name} costs {drop:.2f} points of clean {measure} (budget {args.budget:g}); "
            f"not written to {out} (kept in {rejected}). Raise --accuracy-budget, fine-tune longer or change the recipe"
        )
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    print(f"{summary}\nwithin the accuracy budget ({drop:.2f} <= {args.budget:g} points); wrote {out}")
    return 0


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.2f} %"


def main(argv: list[str] | None = None) -> int:
    from diehardlab.cli import make_parser

    p = make_parser(
        "harden",
        "Rewrite a trained model with the DieHardNet changes (bounded activations, NaN filters, order\n"
        "inversion with fine-tuning) into a new checkpoint folder; report every change and every skip.\n"
        "Example: diehard harden runs/digits_baseline-seed0 --recipe bounds-only --out runs/digits_bounded",
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint folder ('diehard train')")
    p.add_argument("--recipe", required=True, help="setups/hardening name (bounds-only, diehardnet) or TOML file")
    p.add_argument("--out", required=True, help="the new checkpoint folder (must not exist, or be empty)")
    p.add_argument("--calibration-images", type=int, default=1024, help="images for the bounds (default 1024)")
    p.add_argument("--calibration-split", choices=("train", "val"), default="train", help="default train")
    p.add_argument("--data-dir", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--image-dir", type=Path, help="image files instead of the dataset: the first N calibrate")
    p.add_argument("--image-glob", help="files of --image-dir (default *.png)")
    p.add_argument("--mean", help="per-channel mean for --image-dir, comma-separated")
    p.add_argument("--std", help="per-channel std for --image-dir, comma-separated")
    p.add_argument("--accuracy-budget", dest="budget", type=float, default=1.0,
                   help="points of clean accuracy it may cost (default 1.0); over it nothing is written")  # fmt: skip
    p.add_argument("--fine-tune", type=int, default=0, metavar="EPOCHS",
                   help="fault-aware fine-tuning epochs after the rewrite (needed for order inversion)")  # fmt: skip
    p.add_argument("--config", help="training recipe TOML for --fine-tune (default: the checkpoint's own)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default: the recipe's x 0.5)")
    p.add_argument("--seed", type=int, default=0, help="calibration subset and fine-tuning seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    args = p.parse_args(argv)
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0 (got {args.threads}; 0: torch's default)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
