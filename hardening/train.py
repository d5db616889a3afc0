"""``diehard train``: (fault-aware) training of the models of ``diehardlab.hardening.models`` into checkpoint folders.

The configuration is a ``TrainConfig`` dataclass, read from a TOML file (``setups/models/*.toml``): top-level
training keys, a ``[model]`` table (``ModelConfig``) and a ``[faults]`` table (``FaultSpec``) used when
``fault_aware = true`` and for the injected validation accuracy of every epoch.

Data lives on the device as whole tensors; batches are index slices of a seeded permutation, and the random
crop and flip are done on the batch with tensor indexing, so an epoch has no Python loop over images.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diehardlab.hardening import checkpoint as ckpt
from diehardlab.hardening.data import NAMES, Dataset, fixed_normalisation, load_dataset
from diehardlab.hardening.faults import FaultInjector, FaultSpec, curriculum_scale
from diehardlab.hardening.models import ModelConfig, build_model, config_from_dict
from pydantic import ConfigDict
from torch import nn

from diehardlab.config import read_toml
from diehardlab.errors import ConfigError
from diehardlab.outfiles import write_text_atomic

METRIC_FIELDS = [
    "epoch",
    "lr",
    "magnitude_scale",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_injected_accuracy",
    "epoch_time_s",
]


@dataclass
class TrainConfig:
    # Read by pydantic when validating a table into this dataclass: a misspelt key is an error, inf/nan too.
    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = "model"
    dataset: str = "digits"
    data_dir: str = ""
    # Use only the first N training images of a seeded shuffle (0: all); for quick runs and benchmarks.
    train_limit: int = 0
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | constant | multistep; stepped every batch
    # multistep: the lr is multiplied by gamma at the start of each of these epochs (the benchmark suite's recipes)
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    # Input normalisation: "train-split" (mean/std of the training split) or "suite" (the benchmark suite's fixed
    # constants per dataset, recorded as fixed in config.json's "normalisation" so every later command uses them)
    normalise_with: str = "train-split"
    loss: str = "ce"  # ce | bce (BCE on one-hot targets, as the DieHardNet paper)
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0: off
    crop_pad: int = 0  # random crop after zero padding by this many pixels; 0: off
    flip: bool = False  # random horizontal flip
    fault_aware: bool = False
    # After each fault-aware epoch, re-estimate the BN running statistics on this many clean training images
    # (0: off). Faults injected before a BN layer (conv -> BN order) inflate its running variance during
    # training; the deployed model sees clean data almost always, so its statistics should be the clean ones.
    bn_recalibrate: int = 0
    curriculum: str = "linear"  # linear | none: fault magnitude scale grows linearly over the epochs
    curriculum_start: float = 0.1
    seed: int = 0
    amp: bool = True  # mixed precision (bfloat16, or float16 with loss scaling) on CUDA only
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_batch_size: int = 1024
    model: ModelConfig = field(default_factory=ModelConfig)
    faults: FaultSpec = field(default_factory=FaultSpec)

    def __post_init__(self) -> None:
        checks = {
            "dataset": (self.dataset in NAMES, f"one of {', '.join(NAMES)}"),
            "optimizer": (self.optimizer in ("sgd", "adam", "adamw"), "sgd, adam or adamw"),
            "schedule": (self.schedule in ("cosine", "constant", "multistep"), "cosine, constant or multistep"),
            "milestones": (
                all(0 < m <= self.epochs for m in self.milestones)
                and list(self.milestones) == sorted(set(self.milestones)),
                "increasing epochs within 1..epochs",
            ),
            "gamma": (0 < self.gamma <= 1, "within (0, 1]"),
            "normalise_with": (self.normalise_with in ("train-split", "suite"), "train-split or suite"),
            "loss": (self.loss in ("ce", "bce"), "ce or bce"),
            "curriculum": (self.curriculum in ("linear", "none"), "linear or none"),
            "epochs": (self.epochs >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "eval_batch_size": (self.eval_batch_size >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"),
            "momentum": (0 <= self.momentum < 1, "within [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "within [0, 1)"),
            "grad_clip": (self.grad_clip >= 0, ">= 0"),
            "crop_pad": (self.crop_pad >= 0, ">= 0"),
            "train_limit": (self.train_limit >= 0, ">= 0"),
            "bn_recalibrate": (self.bn_recalibrate >= 0, ">= 0"),
            "curriculum_start": (0 <= self.curriculum_start <= 1, "within [0, 1]"),
        }
        for key, (ok, want) in checks.items():
            if not ok:
                raise ConfigError(f"{key}: must be {want} (got {getattr(self, key)!r})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["faults"] = self.faults.to_dict()
        return d


def load_config(path: str | Path) -> TrainConfig:
    """Read a model config TOML (``setups/models/*.toml``); errors name the file and the field."""
    return config_from_dict(TrainConfig, read_toml(path), str(path))


# ---------------------------------------------------------------- device, data, augmentation


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here (use auto or cpu)")
    return torch.device(name)


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding ``crop_pad``) and horizontal flip, per image, without a loop over images."""
    n, _, h, w = x.shape
    if cfg.crop_pad > 0:
        p = cfg.crop_pad
        padded = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (ox[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, chan, rows, cols]
    if cfg.flip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    return x


def _amp_context(device: torch.device, cfg: TrainConfig):
    if cfg.amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return torch.autocast(device_type=device.type, enabled=False)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    logits = logits.float()
    if cfg.loss == "ce":
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    target = F.one_hot(y, logits.shape[1]).float()
    if cfg.label_smoothing:
        target = target * (1 - cfg.label_smoothing) + cfg.label_smoothing / logits.shape[1]
    return F.binary_cross_entropy_with_logits(logits, target)


# ---------------------------------------------------------------- one epoch, evaluation


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    data_gen: torch.Generator
    fault_gen: torch.Generator
    device: torch.device
    injector: FaultInjector | None = None
    epoch: int = 0  # epochs completed


def train_one_epoch(state: TrainState, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, progress: bool = False):
    """One pass over (x, y) in seeded random batches; returns mean loss and accuracy (dict)."""
    model, device = state.model, state.device
    model.train()
    if state.injector is not None:
        scale = curriculum_scale(state.epoch, cfg.epochs, cfg.curriculum_start) if cfg.curriculum == "linear" else 1.0
        state.injector.spec.magnitude_scale = scale
        state.injector.enabled = True
    n = x.shape[0]
    order = torch.randperm(n, generator=state.data_gen).to(device)
    steps = math.ceil(n / cfg.batch_size)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bar = _progress(steps, f"epoch {state.epoch + 1}/{cfg.epochs}", progress)
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for i in range(steps):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        xb = augment(x[idx], cfg, state.data_gen).contiguous(memory_format=memory)
        yb = y[idx]
        with _amp_context(device, cfg):
            logits = model(xb)
        loss = loss_fn(logits, yb, cfg)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        loss_sum += loss.detach() * yb.shape[0]
        correct += (logits.detach().argmax(1) == yb).sum()
        if bar is not None:
            bar.update(1)
            if i % 10 == 9 or i == steps - 1:
                seen = min((i + 1) * cfg.batch_size, n)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
    if bar is not None:
        bar.close()
    if state.injector is not None:
        state.injector.enabled = False
        if cfg.bn_recalibrate:
            recalibrate_bn(model, x[: cfg.bn_recalibrate], cfg)
    return {"train_loss": loss_sum.item() / n, "train_accuracy": correct.item() / n}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, cfg: TrainConfig) -> None:
    """Recompute every BatchNorm's running mean and variance on the clean images ``x`` (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) == 0:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.train()
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for i in range(0, len(x), cfg.batch_size):
        with _amp_context(x.device, cfg):
            model(x[i : i + cfg.batch_size].contiguous(memory_format=memory))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, memory=torch.contiguous_format) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``x`` in batches, float32, on x's device."""
    model.eval()
    outs = [model(x[i : i + batch_size].contiguous(memory_format=memory)).float() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def top1(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class per row, or -1 where the row is not all finite (such an output is never right)."""
    finite = torch.isfinite(logits).all(dim=1)
    return torch.where(finite, logits.nan_to_num().argmax(1), torch.full_like(finite, -1, dtype=torch.long))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    spec: FaultSpec | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Loss and accuracy on (x, y); with ``spec``, under one injected fault per image (seeded)."""
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if spec is None:
        logits = predict(model, x, cfg.eval_batch_size, memory)
    else:
        inj_spec = replace(spec, p=1.0, layer_choice="per-image", magnitude_scale=1.0)
        with FaultInjector(model, inj_spec, torch.Generator().manual_seed(seed)):
            logits = predict(model, x, cfg.eval_batch_size, memory)
    pred = top1(logits)
    loss = loss_fn(logits.nan_to_num(), y, cfg).item() if len(y) else float("nan")
    return {"loss": loss, "accuracy": (pred == y).float().mean().item() if len(y) else float("nan")}


# ---------------------------------------------------------------- the run


def _fixed_normalisation(cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if cfg.normalise_with != "suite":
        return None
    from diehardlab.hardening.zoo import NORMALISATION

    if cfg.dataset not in NORMALISATION:
        raise ConfigError(
            f"normalise_with: the suite has no constants for {cfg.dataset!r} ({', '.join(NORMALISATION)})"
        )
    return NORMALISATION[cfg.dataset]


def _limit(ds: Dataset, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not limit or limit >= len(ds):
        return ds.x, ds.y
    keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return ds.x[keep], ds.y[keep]


def make_state(
    cfg: TrainConfig, in_channels: int, num_classes: int, steps_per_epoch: int, model: nn.Module | None = None
) -> TrainState:
    """Optimizer, schedule, generators and injector around ``model`` (default: a new ``cfg.model`` network)."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = (model if model is not None else build_model(cfg.model, in_channels, num_classes)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # No weight decay on BN parameters and biases (standard for these ResNets).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif cfg.schedule == "multistep":
        # stepped every batch like the others: an epoch milestone is that many batches
        steps = [m * steps_per_epoch for m in cfg.milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=cfg.gamma)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    use_scaler = cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    state = TrainState(
        model=model,
        optimizer=opt,
        scheduler=sched,
        scaler=scaler,
        data_gen=torch.Generator().manual_seed(cfg.seed + 1),
        fault_gen=torch.Generator().manual_seed(cfg.seed + 2),
        device=device,
    )
    if cfg.fault_aware:
        state.injector = FaultInjector(model, replace(cfg.faults), state.fault_gen).attach()
        state.injector.enabled = False
    return state


def _resume_state(state: TrainState) -> dict[str, Any]:
    return {
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "epoch": state.epoch,
        "data_gen": state.data_gen.get_state(),
        "fault_gen": state.fault_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def _restore(state: TrainState, saved: dict[str, Any]) -> None:
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    state.epoch = int(saved["epoch"])
    state.data_gen.set_state(saved["data_gen"].cpu())
    state.fault_gen.set_state(saved["fault_gen"].cpu())
    torch.set_rng_state(saved["torch_rng"].cpu())


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) <= upto]


def run_config(cfg: TrainConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json content: the training config plus what is needed to rebuild and reproduce the model."""
    from diehardlab import __version__

    return {**cfg.to_dict(), **(extra or {}), "diehardlab_version": __version__, "torch_version": torch.__version__}


@dataclass
class Start:
    """Where a run that does not start from scratch starts: a network with its weights (``diehard train --from``,
    ``diehard harden --fine-tune``) and what config.json must say about it (its hardening, where it came from)."""

    model: nn.Module
    config: dict[str, Any]
    # The source's config.json "normalisation": the weights were trained on inputs normalised so, and so are the
    # new run's (whatever the recipe's normalise_with says). None: as the recipe says.
    normalisation: dict[str, Any] | None = None
    source: str = ""


def _normalisation_of(start: Start, cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The fixed (mean, std) of a run that starts from a checkpoint's weights, or None for the training split's
    statistics: the source checkpoint's normalisation, whatever the recipe says."""
    src = start.normalisation
    if not isinstance(src, dict):  # a folder that records none (not written by diehardlab): the recipe's
        return _fixed_normalisation(cfg)
    return fixed_normalisation({"normalisation": src})


def _check_same_statistics(start: Start, info: Any) -> None:
    """A source normalised with its training split's statistics must see the same statistics here: otherwise
    the data is not the data it was trained on (another --data-dir, another copy of the dataset)."""
    src = start.normalisation or {}
    if not isinstance(src, dict) or src.get("fixed") or "mean" not in src or "std" not in src:
        return
    mine = (*info.mean, *info.std)
    theirs = (*src["mean"], *src["std"])
    close = all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(mine, theirs))
    if len(mine) != len(theirs) or not close:
        raise ConfigError(
            f"the training split's statistics here (mean {list(info.mean)}, std {list(info.std)}) differ from "
            f"those {start.source or 'the source checkpoint'} was trained with (mean {src['mean']}, std {src['std']}):"
            " not the data it was trained on (check --data-dir)"
        )


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = False,
    log=print,
    stop_after: int = 0,
    start: Start | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into the checkpoint folder ``out`` (continuing it with ``resume``); returns the summary.

    ``stop_after`` ends this session after that many epochs (0: run to the end); ``resume`` continues later.
    ``start`` trains that network from its weights instead of a new ``cfg.model`` one.
    """
    out = Path(out)
    model = start.model if start is not None else None
    if resume:
        saved_cfg = ckpt.read_config(out)
        if "hardening" in saved_cfg or "factory" in saved_cfg:  # not a cfg.model network: rebuild it as saved
            model = ckpt.build_architecture(saved_cfg, out / ckpt.CONFIG)
        fresh = run_config(cfg, {k: saved_cfg.get(k) for k in ("in_channels", "num_classes", "normalisation")})
        # Where the data is and which device runs it may change between sessions; the recipe may not.
        free = ("diehardlab_version", "torch_version", "data_dir", "device", "eval_batch_size")
        # keys added to TrainConfig after the run started read as their defaults
        defaults = asdict(TrainConfig())
        diff = sorted(k for k in fresh if k not in free and fresh[k] != saved_cfg.get(k, defaults.get(k)))
        if diff:
            raise ConfigError(
                f"{out / ckpt.CONFIG}: --resume continues the saved run, but the config differs in: {', '.join(diff)} "
                "(resume without --config to use the saved one, or train into a new --out)"
            )
    elif (out / ckpt.LAST).exists():
        raise ConfigError(f"{out}: holds a training run already; pass --resume to continue it or choose another --out")
    data_dir = cfg.data_dir or None
    if resume:  # as the run started: its recorded normalisation (a --from run's is its source's)
        norm = fixed_normalisation(saved_cfg)
    elif start is not None:
        norm = _normalisation_of(start, cfg)
    else:
        norm = _fixed_normalisation(cfg)
    train_ds = load_dataset(cfg.dataset, "train", data_dir, norm)
    val_ds = load_dataset(cfg.dataset, "val", data_dir, norm)
    info = train_ds.info
    if start is not None and not resume and norm is None:
        _check_same_statistics(start, info)
    x, y = _limit(train_ds, cfg.train_limit, cfg.seed)
    state = make_state(cfg, info.in_channels, info.num_classes, math.ceil(len(y) / cfg.batch_size), model)
    device = state.device
    x, y = x.to(device), y.to(device)
    vx, vy = val_ds.x.to(device), val_ds.y.to(device)
    config = run_config(
        cfg,
        {
            "in_channels": info.in_channels,
            "num_classes": info.num_classes,
            "normalisation": {"mean": list(info.mean), "std": list(info.std), "fixed": norm is not None},
            **(start.config if start is not None else {}),
        },
    )
    rows: list[dict[str, Any]] = []
    if resume:
        _restore(state, ckpt.load_last(out))
        rows = _read_metrics(out / ckpt.METRICS, state.epoch)
        if state.epoch >= cfg.epochs:
            log(f"{out}: all {cfg.epochs} epochs are done already")
    else:
        ckpt.save_config(out, config)
    log(
        f"train {cfg.name}: {cfg.dataset} ({len(y)} train / {len(vy)} val images), {cfg.model.arch}, "
        f"{cfg.epochs} epochs on {device}, seed {cfg.seed}, fault-aware {cfg.fault_aware} -> {out}"
    )
    last = min(cfg.epochs, state.epoch + stop_after) if stop_after else cfg.epochs
    while state.epoch < last:
        t0 = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(state, x, y, cfg, progress)
        scale = state.injector.spec.magnitude_scale if state.injector else 0.0
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        clean = evaluate(state.model, vx, vy, cfg)
        injected = evaluate(state.model, vx, vy, cfg, cfg.faults, seed=cfg.seed + 3)
        state.epoch += 1
        row = {
            "epoch": state.epoch,
            "lr": f"{lr:.6g}",
            "magnitude_scale": f"{scale:.6g}",
            "train_loss": f"{stats['train_loss']:.6f}",
            "train_accuracy": f"{stats['train_accuracy']:.6f}",
            "val_loss": f"{clean['loss']:.6f}",
            "val_accuracy": f"{clean['accuracy']:.6f}",
            "val_injected_accuracy": f"{injected['accuracy']:.6f}",
            "epoch_time_s": f"{elapsed:.3f}",
        }
        rows.append(row)
        ckpt.save_model(out, state.model)
        ckpt.save_last(out, _resume_state(state))
        ckpt.save_metrics(out, rows, METRIC_FIELDS)
        log(
            f"epoch {state.epoch:>3}/{cfg.epochs}  loss {stats['train_loss']:.4f}"
            f"  train acc {stats['train_accuracy']:.4f}  val acc {clean['accuracy']:.4f}"
            f"  injected {injected['accuracy']:.4f}  {elapsed:.1f}s"
        )
    if state.injector:
        state.injector.detach()
    if state.epoch < cfg.epochs:
        log(f"stopped after epoch {state.epoch}/{cfg.epochs}; continue with --resume --out {out}")
        return {"checkpoint": str(out), "epochs": state.epoch, "test_accuracy": None}
    test_ds = load_dataset(cfg.dataset, "test", data_dir, norm)
    test = evaluate(state.model, test_ds.x.to(device), test_ds.y.to(device), cfg)
    summary = {"checkpoint": str(out), "epochs": state.epoch, "test_accuracy": test["accuracy"]}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n", "--out")
    log(f"test accuracy {test['accuracy']:.4f}; checkpoint {out}")
    return summary


# ---------------------------------------------------------------- from a checkpoint (--from, --fine-tune)
#
# ``diehard train --from CKPT [--fine-tune]``: more training for a trained network, from its weights. The
# network is the checkpoint's own, rebuilt by ``load_model`` (a hardened graph stays hardened). The recipe is
# the checkpoint's saved one (or ``--config``; its ``[model]`` table is not used), with ``--epochs``; the
# learning rate ``--lr``, else the recipe's times ``LR_SCALE`` (the weights are trained already: a full
# from-scratch rate would throw much of that away in the first steps); ``--fine-tune``: fault-aware (the
# recipe's ``[faults]``, the linear curriculum over these epochs) with BN recalibration after each epoch (the
# recipe's ``bn_recalibrate``, or ``BN_RECALIBRATE`` images). config.json keeps the source's ``hardening`` entry
# and says where the weights came from (``fine_tune``: source, its model.pt sha256, epochs, fault-aware, lr and
# the source's own ``fine_tune`` entry). ``--resume`` continues such a run like any other.

LR_SCALE = 0.5
BN_RECALIBRATE = 1024


def source_recipe(loaded: ckpt.LoadedModel) -> TrainConfig:
    """The training recipe saved with a checkpoint (defaults for what a non-'diehard train' folder lacks)."""
    keep = {f.name for f in fields(TrainConfig)}
    data = {k: v for k, v in loaded.config.items() if k in keep}
    if loaded.config.get("factory"):
        data.pop("model", None)  # the network is the factory's, not a ModelConfig one
    return config_from_dict(TrainConfig, data, str(loaded.path / "config.json"))


def from_checkpoint(
    loaded: ckpt.LoadedModel,
    epochs: int,
    fine_tune: bool,
    recipe: TrainConfig | None = None,
    lr: float | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[TrainConfig, Start]:
    """The config and start point of a run that trains ``loaded`` for ``epochs`` more epochs."""
    base = source_recipe(loaded)
    if recipe is not None:
        # The recipe's training settings, the checkpoint's network: config.json's "model" must rebuild the network
        # that was trained (load_model, --resume), not the recipe's [model] table.
        base = replace(recipe, model=base.model)
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
    source_norm = loaded.config.get("normalisation")
    start = Start(loaded.model, config, source_norm if isinstance(source_norm, dict) else None, str(loaded.path))
    if start.normalisation is not None:
        # The recipe's normalise_with says what the data is normalised with: the source's choice, not the recipe's.
        fixed = fixed_normalisation(loaded.config)
        suite = _suite_constants(cfg.dataset)
        same_as_suite = fixed is not None and suite is not None and _same(fixed, suite)
        wanted = "suite" if same_as_suite else "train-split" if fixed is None else cfg.normalise_with
        cfg = replace(cfg, normalise_with=wanted)
    return cfg, start


def _suite_constants(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    from diehardlab.hardening.zoo import NORMALISATION

    return NORMALISATION.get(dataset)


def _same(a: tuple[tuple[float, ...], ...], b: tuple[tuple[float, ...], ...]) -> bool:
    return all(len(x) == len(y) and all(math.isclose(u, v, rel_tol=1e-7) for u, v in zip(x, y)) for x, y in zip(a, b))


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
    loaded = ckpt.load_model(args.from_ckpt, "cpu")
    recipe = load_config(args.config) if args.config else None
    cfg, start = from_checkpoint(loaded, args.epochs, args.fine_tune, recipe, args.lr)
    if recipe is not None and recipe.normalise_with != cfg.normalise_with:
        print(
            f"inputs normalised as {loaded.path} was trained ({cfg.normalise_with}), not as {args.config} says "
            f"(normalise_with = {recipe.normalise_with!r}): the weights expect those inputs"
        )
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
