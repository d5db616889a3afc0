"""Checkpoint folders: tensors plus a JSON config, never pickled modules.

A checkpoint is a folder::

    config.json   the full training config: model (ModelConfig fields), dataset, in_channels, num_classes,
                  seed, normalisation, diehardlab_version, torch_version, ...
    model.pt      final (or latest) weights: the model's state_dict only
    last.pt       resume state: model, optimizer, scheduler, epoch, generator states
    metrics.csv   one row per epoch

Everything loads with ``torch.load(..., weights_only=True)``. Files are written to a temporary name and renamed,
so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diehardlab.errors import DataError

CONFIG = "config.json"
MODEL = "model.pt"
LAST = "last.pt"
METRICS = "metrics.csv"


@dataclass
class LoadedModel:
    model: nn.Module
    config: dict[str, Any]
    dataset: str
    in_channels: int
    num_classes: int
    model_hash: str  # sha256 hex of model.pt's bytes
    path: Path


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a reader never sees a half-written file; a failed write leaves
    the old file (or none) and no temporary behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_atomic = atomic_write


def save_config(ckpt_dir: str | Path, config: dict[str, Any]) -> None:
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    _atomic(d / CONFIG, lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))


def read_config(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG
    if not path.is_file():
        raise DataError(f"{ckpt_dir}: not a checkpoint folder (no {CONFIG}); make one with 'diehard train'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: the file does not depend on the device or the memory format trained with.
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_model(ckpt_dir: str | Path, model: nn.Module) -> None:
    _atomic(Path(ckpt_dir) / MODEL, lambda p: torch.save(_cpu_state(model), p))


def save_last(ckpt_dir: str | Path, state: dict[str, Any]) -> None:
    """Resume state (model/optimizer/scheduler state_dicts, epoch, generator states): tensors and plain values."""
    _atomic(Path(ckpt_dir) / LAST, lambda p: torch.save(state, p))


def save_metrics(ckpt_dir: str | Path, rows: list[dict[str, Any]], fieldnames: list[str]) -> None:
    """``metrics.csv``: one row per epoch, rewritten whole (it is small) so it always matches ``last.pt``."""

    def write(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fieldnames)
            w.writeheader()
            w.writerows(rows)

    _atomic(Path(ckpt_dir) / METRICS, write)


def load_last(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(ckpt_dir) / LAST
    if not path.is_file():
        raise DataError(f"{path}: no resume state in this checkpoint folder")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(
            f"{path}: not a resume state written by 'diehard train' ({type(exc).__name__}); train into a new --out"
        ) from exc


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from ``config.json`` and load ``model.pt`` into it, in eval mode on ``device``."""
    from diehardlab.hardening.models import ModelConfig, build_model

    d = Path(ckpt_dir)
    config = read_config(d)
    weights = d / MODEL
    if not weights.is_file():
        raise DataError(f"{weights}: missing; the training run did not finish an epoch (resume it with --resume)")
    for key in ("model", "dataset", "in_channels", "num_classes"):
        if key not in config:
            raise DataError(f"{d / CONFIG}: no {key!r} entry; not written by 'diehard train'")
    model = build_model(
        ModelConfig.from_dict(config["model"], f"{d / CONFIG}: model"),
        int(config["in_channels"]),
        int(config["num_classes"]),
    )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise DataError(f"{weights}: does not match the model in {CONFIG} ({exc})") from exc
    model.to(device).eval()
    return LoadedModel(
        model=model,
        config=config,
        dataset=str(config["dataset"]),
        in_channels=int(config["in_channels"]),
        num_classes=int(config["num_classes"]),
        model_hash=file_sha256(weights),
        path=d,
    )
