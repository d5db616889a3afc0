"""Checkpoint folders: tensors plus a JSON config, never pickled modules.

A checkpoint is a folder::

    config.json   the full training config: model (ModelConfig fields), dataset, in_channels, num_classes,
                  seed, normalisation, diehardlab_version, torch_version, ...; "hardening" (the recipe and
                  bound of every site) when ``diehard harden`` rewrote the model, "fine_tune" when
                  ``diehard train --from`` started from another checkpoint's weights
    model.pt      final (or latest) weights: the model's state_dict only
    last.pt       resume state: model, optimizer, scheduler, epoch, generator states
    metrics.csv   one row per epoch

Everything loads with ``torch.load(..., weights_only=True)`` (:func:`load_tensor_file`: a damaged, empty or
foreign file is one line naming it, and never the advice to load it with ``weights_only=False``, which would run
whatever code the file names). Files are written to a temporary name and renamed
(``diehardlab.outfiles.write_atomic``), so an interrupted save or a full disk never leaves a half-written
checkpoint behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diehardlab.errors import DataError
from diehardlab.outfiles import write_atomic, write_text_atomic, write_text_stream

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


def save_tensors(obj: Any, path: str | Path, option: str = "--out") -> Path:
    """``torch.save`` then rename. Serialised in memory first: torch's own file writer reports a full disk as
    a RuntimeError from C++, which could not be told apart from a real bug."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()), option)


def save_config(ckpt_dir: str | Path, config: dict[str, Any]) -> None:
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_text_atomic(d / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n", "--out")


def read_config(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG
    if not path.is_file():
        raise DataError(f"{ckpt_dir}: not a checkpoint folder (no {CONFIG}); make one with 'diehard train'")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); not a config written by 'diehard train'") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: not a JSON object ({type(config).__name__}); not written by 'diehard train'")
    return config


def _positive_int(config: dict[str, Any], key: str, path: Path) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{path}: field {key!r} must be an integer >= 1 (got {value!r})")
    return value


def load_tensor_file(path: str | Path, device: str | torch.device = "cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)``, with one line naming the file for every way it can fail."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a {what}")
    if size == 0:
        raise DataError(f"{path}: not a {what}: the file is empty (0 bytes; cut off when it was written?)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False: that would run what the file names. Say what it is instead.
        if "GLOBAL" in str(exc) or "global" in str(exc):
            raise DataError(
                f"{path}: holds Python objects besides tensors, so it is not a {what}; refused (loading it would "
                "run code the file names)"
            ) from None
        raise DataError(f"{path}: not a {what} (not a torch tensor file, or damaged)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None
    except Exception:  # torch raises RuntimeError, EOFError, ValueError... for damaged or foreign files
        raise DataError(f"{path}: not a {what} (a damaged, truncated or foreign file; {size} bytes)") from None


def _state_mismatch(model: nn.Module, state: dict[str, Any]) -> str:
    """The differences between ``state`` and the model's own state_dict, in one short line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} is {list(state[k].shape)}, the model's {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or "the values do not fit"


def load_state_into(model: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Load the state_dict file ``path`` (``model.pt``) into ``model``; one line on any mismatch."""
    state = load_tensor_file(path, device, "state_dict of model weights")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise DataError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError):
        raise DataError(f"{path}: does not match the model in {CONFIG} ({_state_mismatch(model, state)})") from None


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: the file does not depend on the device or the memory format trained with.
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_model(ckpt_dir: str | Path, model: nn.Module) -> None:
    save_tensors(_cpu_state(model), Path(ckpt_dir) / MODEL)


def save_last(ckpt_dir: str | Path, state: dict[str, Any]) -> None:
    """Resume state (model/optimizer/scheduler state_dicts, epoch, generator states): tensors and plain values."""
    save_tensors(state, Path(ckpt_dir) / LAST)


def save_metrics(ckpt_dir: str | Path, rows: list[dict[str, Any]], fieldnames: list[str]) -> None:
    """``metrics.csv``: one row per epoch, rewritten whole (it is small) so it always matches ``last.pt``."""

    def write(f) -> None:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)

    write_text_stream(Path(ckpt_dir) / METRICS, write, "--out", newline="")


def load_last(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(ckpt_dir) / LAST
    if not path.is_file():
        raise DataError(f"{path}: no resume state in this checkpoint folder")
    state = load_tensor_file(path, device, "resume state written by 'diehard train'")
    if not isinstance(state, dict):
        raise DataError(f"{path}: not a resume state written by 'diehard train'; train into a new --out")
    return state


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_callable(spec: str, what: str) -> Any:
    """The callable named ``MODULE:CALLABLE`` or ``FILE.py:CALLABLE``; errors start with ``what``."""
    import importlib
    import importlib.util

    from diehardlab.errors import ConfigError

    mod_name, sep, attr = str(spec).rpartition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"{what}: {spec!r} must be MODULE:CALLABLE or FILE.py:CALLABLE")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise ConfigError(f"{what}: {path} does not exist")
            s = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(s)
            s.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what}: cannot load {spec!r} ({exc})") from exc


def build_architecture(config: dict[str, Any], source: str | Path = CONFIG) -> nn.Module:
    """The untrained network a ``config.json`` describes, ready for ``load_state_dict``.

    The base is ``"factory"`` (``MODULE:CALLABLE`` with ``"factory_kwargs"``, for architectures defined
    elsewhere) or ``"model"`` (``diehardlab.hardening.models.ModelConfig``); a ``"hardening"`` entry (written by
    ``diehard harden``) then rewrites it exactly as it was hardened (``diehardlab.hardening.rewrite.rebuild``).
    """
    if config.get("factory"):
        kwargs = config.get("factory_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise DataError(f"{source}: 'factory_kwargs' must be a table of keyword arguments")
        model = import_callable(config["factory"], f"{source}: factory")(**kwargs)
        if not isinstance(model, nn.Module):
            raise DataError(f"{source}: factory {config['factory']} returned {type(model).__name__}, not a module")
    else:
        from diehardlab.hardening.models import ModelConfig, build_model

        model = build_model(
            ModelConfig.from_dict(config["model"], f"{source}: model"),
            int(config["in_channels"]),
            int(config["num_classes"]),
        )
    if config.get("hardening"):
        from diehardlab.hardening.rewrite import rebuild

        model = rebuild(model.eval(), config["hardening"], str(source))
    return model


def load_model(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from ``config.json`` and load ``model.pt`` into it, in eval mode on ``device``."""
    d = Path(ckpt_dir)
    config = read_config(d)
    weights = d / MODEL
    if not weights.is_file():
        raise DataError(f"{weights}: missing; the training run did not finish an epoch (resume it with --resume)")
    for key in ("model" if not config.get("factory") else "factory", "dataset", "in_channels", "num_classes"):
        if key not in config:
            raise DataError(f"{d / CONFIG}: no {key!r} entry; not written by 'diehard train'")
    in_channels = _positive_int(config, "in_channels", d / CONFIG)
    num_classes = _positive_int(config, "num_classes", d / CONFIG)
    if not isinstance(config["dataset"], str) or not config["dataset"]:
        raise DataError(f"{d / CONFIG}: field 'dataset' must be a dataset name (got {config['dataset']!r})")
    model = build_architecture(config, d / CONFIG)
    load_state_into(model, weights)
    model.to(device).eval()
    return LoadedModel(
        model=model,
        config=config,
        dataset=config["dataset"],
        in_channels=in_channels,
        num_classes=num_classes,
        model_hash=file_sha256(weights),
        path=d,
    )
