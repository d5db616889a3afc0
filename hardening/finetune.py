"""``diehard train --from CKPT [--fine-tune]``: more training for a trained network, from its weights.

The network is the checkpoint's own, rebuilt by ``load_model`` (a hardened graph stays hardened). The training
recipe is the checkpoint's saved one (or ``--config``; its ``[model]`` table is not used: the network is the
checkpoint's), with:

- ``epochs``: ``--epochs`` (required);
- ``lr``: ``--lr``, else the recipe's times ``LR_SCALE``: the weights are trained already, and a full
  from-scratch learning rate would throw much of that away in the first steps;
- ``--fine-tune``: fault-aware (the recipe's ``[faults]``, the linear curriculum over these epochs) with BN
  recalibration after each epoch (the recipe's ``bn_recalibrate``, or ``BN_RECALIBRATE`` images when it has
  none). Without it, plain training (e.g. to recover clean accuracy).

``config.json`` of the new checkpoint keeps the source's ``hardening`` entry and says where the weights came
from (``fine_tune``: source folder, its ``model.pt`` sha256, epochs, fault-aware, and the source's own
``fine_tune`` entry, so a chain of fine-tunings stays traceable). ``--resume`` continues such a run like any other.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from diehardlab.hardening.checkpoint import LoadedModel, load_model
from diehardlab.hardening.models import config_from_dict
from diehardlab.hardening.train import Start, TrainConfig, load_config, pick_device, train

from diehardlab.errors import ConfigError

LR_SCALE = 0.5
BN_RECALIBRATE = 1024


def source_recipe(loaded: LoadedModel) -> TrainConfig:
    """The training recipe saved with a checkpoint (defaults for what a non-'diehard train' folder lacks)."""
    keep = {f.name for f in fields(TrainConfig)}
    data = {k: v for k, v in loaded.config.items() if k in keep}
    if loaded.config.get("factory"):
        data.pop("model", None)  # the network is the factory's, not a ModelConfig one
    return config_from_dict(TrainConfig, data, str(loaded.path / "config.json"))


def from_checkpoint(
    loaded: LoadedModel,
    epochs: int,
    fine_tune: bool,
    recipe: TrainConfig | None = None,
    lr: float | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[TrainConfig, Start]:
    """The config and start point of a run that trains ``loaded`` for ``epochs`` more epochs."""
    base = recipe or source_recipe(loaded)
    if base.dataset != loaded.dataset:
        raise ConfigError(
            f"the recipe trains on {base.dataset}, but {loaded.path} was trained on {loaded.dataset}: "
            "fine-tuning keeps the network's dataset"
        )
    try:
        cfg = replace(
            base,
            name=f"{base.name}-{'ft' if fine_tune else 'from'}{epochs}",
            epochs=epochs,
            lr=lr if lr is not None else base.lr * LR_SCALE,
            fault_aware=fine_tune,
            bn_recalibrate=(base.bn_recalibrate or BN_RECALIBRATE) if fine_tune else base.bn_recalibrate,
        )
    except ConfigError as exc:
        raise ConfigError(f"command line: {exc}") from None
    config: dict[str, Any] = {
        "fine_tune": {
            "from": str(loaded.path),
            "from_model_sha256": loaded.model_hash,
            "epochs": epochs,
            "fault_aware": fine_tune,
            "lr": cfg.lr,
            "previous": loaded.config.get("fine_tune"),
        },
        **(extra or {}),
    }
    for key in ("hardening", "factory", "factory_kwargs"):
        if loaded.config.get(key) is not None and key not in config:
            config[key] = loaded.config[key]
    return cfg, Start(loaded.model, config)


def main_from(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``diehard train --from CKPT [--fine-tune] --epochs N --out DIR`` (the parser is train's)."""
    if not args.from_ckpt:
        p.error("--fine-tune and --lr go with --from CKPT (the checkpoint to start from)")
    if args.resume:
        p.error("--resume continues a run by its --out folder alone; leave out --from")
    if args.epochs is None or args.epochs < 1:
        p.error("--from needs --epochs N (N >= 1): how many epochs to train from the checkpoint's weights")
    if not args.out:
        p.error("--from needs --out DIR: the new checkpoint folder")
    if args.dataset:
        p.error("--dataset: a network is fine-tuned on the dataset it was trained on")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not empty; choose a new folder")
    loaded = load_model(args.from_ckpt, "cpu")
    recipe = load_config(args.config) if args.config else None
    cfg, start = from_checkpoint(loaded, args.epochs, args.fine_tune, recipe, args.lr)
    overrides = {"data_dir": args.data_dir, "seed": args.seed, "train_limit": args.train_limit, "device": args.device}
    try:
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(f"command line: {exc}") from None
    pick_device(cfg.device)  # a missing CUDA is an error before anything is written
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    hardening = loaded.config.get("hardening")
    print(
        f"from {loaded.path} ({'hardened: ' + hardening['recipe']['name'] if hardening else 'not hardened'}): "
        f"{'fault-aware fine-tuning' if args.fine_tune else 'plain training'}, {cfg.epochs} epochs, lr {cfg.lr:g}"
        + (f", BN recalibration on {cfg.bn_recalibrate} images" if args.fine_tune and cfg.bn_recalibrate else "")
    )
    train(cfg, out, progress=progress, stop_after=args.stop_after, start=start)
    return 0
