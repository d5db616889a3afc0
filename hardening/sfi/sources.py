"""Where the model and the images of a fault-injection run come from.

Models: a checkpoint folder written by ``diehard train`` or ``diehard zoo import``; an architecture name with
random weights (``--model resnet20``, or a zoo model ``--model cifar10/resnet20``: enough for sample sizes);
or ``--factory MODULE:CALLABLE`` (or ``FILE.py:CALLABLE``) with ``--weights FILE`` (a state_dict).
Images: the test split of the checkpoint's dataset (``--data-dir``; a folder of labelled images such as the
foolbox ones is a test split too), or a folder of image files (``--image-dir``, labels from the last number of
the file name as in ``cifar10_03_0.png``) normalised with ``--mean`` / ``--std`` (default: the checkpoint's fixed
normalisation, else none); ``--images N`` keeps the first N (or the N best ranked of ``--selection FILE``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diehardlab.hardening.sfi.engine import Images
from torch import nn

from diehardlab.errors import ConfigError, DataError


@dataclass
class Target:
    model: nn.Module
    name: str
    model_hash: str
    dataset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("ckpt", nargs="?", metavar="CKPT_DIR", help="checkpoint folder written by 'diehard train'")
    p.add_argument(
        "--model",
        help="architecture with random weights: resnet20, ..., smallnet, or a zoo model such as cifar10/resnet20",
    )
    p.add_argument("--shortcut", default="pad", choices=("pad", "conv"), help="ResNet shortcut for --model")
    p.add_argument("--in-channels", type=int, default=3, help="input channels for --model (default 3)")
    p.add_argument("--num-classes", type=int, default=10, help="classes for --model (default 10)")
    p.add_argument("--factory", help="MODULE:CALLABLE or FILE.py:CALLABLE returning an nn.Module")
    p.add_argument("--weights", type=Path, help="state_dict file for --factory")
    p.add_argument("--seed", type=int, default=0, help="seed (random weights of --model, fault draws)")


def add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="where the checkpoint's dataset is (see 'diehard train --help')")
    p.add_argument("--image-dir", type=Path, help="folder of image files instead of a dataset")
    p.add_argument("--image-glob", default="*.png", help="files of --image-dir to use (default *.png)")
    p.add_argument(
        "--mean", help="per-channel mean for --image-dir, comma-separated (default: the checkpoint's fixed one, else 0)"
    )
    p.add_argument(
        "--std", help="per-channel std for --image-dir, comma-separated (default: the checkpoint's fixed one, else 1)"
    )
    p.add_argument("--images", type=int, help="use the first N images (or the N best ranked of --selection)")
    p.add_argument("--selection", type=Path, help="ranking CSV written by 'diehard select'")


def device_name(name: str) -> str:
    """``--device``: ``diehardlab.hardening.train.pick_device`` (auto = cuda when present), as a string for run.json."""
    from diehardlab.hardening.train import pick_device

    try:
        return str(pick_device(name))
    except ConfigError as exc:  # the only one pick_device raises: CUDA asked for and missing
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu or auto") from exc
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: not a torch device ({exc})") from exc


def _sha256_state(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_factory(spec: str):
    from diehardlab.hardening.checkpoint import import_callable

    return import_callable(spec, "--factory")


def load_target(args: argparse.Namespace, device: str | torch.device = "cpu") -> Target:
    """The model named by the arguments, in eval mode on ``device``."""
    ckpt = getattr(args, "ckpt", None)
    given = [x for x in (ckpt, args.model, args.factory) if x]
    if len(given) != 1:
        raise ConfigError("give exactly one model: CKPT_DIR, --model NAME or --factory MODULE:CALLABLE")
    if ckpt:
        from diehardlab.hardening.checkpoint import load_model

        lm = load_model(ckpt, device)
        return Target(lm.model, str(ckpt), lm.model_hash, lm.dataset, lm.config)
    if args.model:
        from diehardlab.hardening.models import ModelConfig, build_model, is_zoo_arch

        torch.manual_seed(args.seed)
        if is_zoo_arch(args.model):
            from diehardlab.hardening.zoo import build, entry

            e = entry(args.model)
            cfg = ModelConfig(arch=e.name)
            model = build(e.name, cfg).to(device).eval()
            mean, std = e.normalisation
            config = {
                "model": cfg.to_dict(),
                "random_weights": True,
                "normalisation": {"mean": list(mean), "std": list(std), "fixed": True},
            }
            return Target(model, e.name, _sha256_state(model), e.dataset, config)
        cfg = ModelConfig(arch=args.model, shortcut=args.shortcut)
        model = build_model(cfg, args.in_channels, args.num_classes).to(device).eval()
        return Target(model, args.model, _sha256_state(model), None, {"model": cfg.to_dict(), "random_weights": True})
    model = _load_factory(args.factory)()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--factory: {args.factory} returned {type(model).__name__}, not a torch nn.Module")
    if args.weights:
        if not args.weights.is_file():
            raise DataError(f"--weights: {args.weights} does not exist")
        try:
            state = torch.load(args.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise DataError(f"--weights: {args.weights} does not match {args.factory} ({exc})") from exc
    return Target(model.to(device).eval(), args.factory, _sha256_state(model), None, {"factory": args.factory})


def _floats(text: str | None, what: str, n: int, default: float) -> torch.Tensor:
    if text is None:
        return torch.full((n,), default)
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--{what}: {text!r} is not a comma-separated list of numbers") from exc
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ConfigError(f"--{what}: {len(vals)} values for {n} channels")
    return torch.tensor(vals)


LABEL = re.compile(r"_(\d+)$")


def _image_folder(args: argparse.Namespace, target: Target) -> Images:
    from diehardlab.hardening.data import GTSRB_SIZE, fixed_normalisation, read_images

    if not args.image_dir.is_dir():
        what = "is not a folder" if args.image_dir.exists() else "no such folder"
        raise DataError(f"--image-dir {args.image_dir}: {what}")
    files = sorted(args.image_dir.glob(args.image_glob))
    if not files:
        raise DataError(f"--image-dir: no file matches {args.image_glob!r} in {args.image_dir}")
    x = torch.from_numpy(read_images(files, GTSRB_SIZE if target.dataset == "gtsrb" else None))
    ys = []
    for f in files:
        m = LABEL.search(f.stem)
        ys.append(int(m.group(1)) if m else -1)
    # ToTensor's x / 255 then Normalize's (x - mean) / std, in float32
    x = x.float() / 255.0
    fixed = fixed_normalisation(target.config)
    mean = _floats(args.mean, "mean", x.shape[1], 0.0) if args.mean or not fixed else torch.tensor(fixed[0])
    std = _floats(args.std, "std", x.shape[1], 1.0) if args.std or not fixed else torch.tensor(fixed[1])
    if mean.numel() != x.shape[1] or std.numel() != x.shape[1]:
        raise ConfigError(f"--mean/--std: {mean.numel()} values for {x.shape[1]}-channel images")
    x = (x - mean.float()[None, :, None, None]) / std.float()[None, :, None, None]
    return Images(x.contiguous(), torch.tensor(ys, dtype=torch.int64), [f.name for f in files])


def read_selection(path: Path) -> list[str]:
    """Image ids of a 'diehard select' ranking, best first."""
    if not path.is_file():
        raise DataError(f"--selection: {path} does not exist; write it with 'diehard select'")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"--selection: {path} is not a ranking CSV of 'diehard select' ({exc})") from None
    if not rows or "image" not in rows[0] or "rank" not in rows[0]:
        raise DataError(f"--selection: {path}: line 1 must have the columns rank and image (from 'diehard select')")
    try:
        rows.sort(key=lambda r: int(r["rank"]))
    except (TypeError, ValueError) as exc:  # TypeError: a row shorter than the header has no rank
        raise DataError(f"--selection: {path}: column rank: {exc}") from None
    return [r["image"] for r in rows]


def load_images(args: argparse.Namespace, target: Target) -> Images:
    """The images of the run, in the order given (a selection keeps its ranking)."""
    if args.image_dir:
        imgs = _image_folder(args, target)
    else:
        if not target.dataset:
            raise ConfigError("no images: give a checkpoint (its dataset's test split is used) or --image-dir")
        from diehardlab.hardening.data import fixed_normalisation, labelled_image_files, load_dataset

        ds = load_dataset(target.dataset, "test", args.data_dir, fixed_normalisation(target.config))
        files = labelled_image_files(args.data_dir, target.dataset) if args.data_dir else []
        ids = [f.name for _, _, f in files] if len(files) == len(ds) else [str(i) for i in range(len(ds))]
        imgs = Images(ds.x, ds.y, ids)
    if args.selection:
        order = read_selection(args.selection)
        pos = {iid: i for i, iid in enumerate(imgs.ids)}
        missing = [iid for iid in order if iid not in pos]
        if missing:
            raise DataError(f"--selection: {args.selection}: image {missing[0]!r} is not among the run's images")
        idx = torch.tensor([pos[i] for i in order])
        imgs = Images(imgs.x[idx], imgs.y[idx], order)
    if args.images is not None:
        if args.images < 1:
            raise ConfigError(f"--images must be >= 1, got {args.images}")
        imgs = Images(imgs.x[: args.images], imgs.y[: args.images], imgs.ids[: args.images])
    return imgs


def image_dir_images(
    image_dir: Path,
    image_glob: str = "*.png",
    mean: str | None = None,
    std: str | None = None,
    dataset: str | None = None,
    config: dict[str, Any] | None = None,
) -> Images:
    """``--image-dir`` of the commands that take a checkpoint folder (``harden``, ``evaluate``): the files in name
    order, labels from their names, normalised with ``--mean``/``--std`` or else the checkpoint's fixed
    normalisation (``diehard zoo import``), GTSRB images resized as the dataset's."""
    ns = argparse.Namespace(image_dir=Path(image_dir), image_glob=image_glob, mean=mean, std=std)
    return _image_folder(ns, Target(nn.Identity(), str(image_dir), "", dataset, config or {}))
