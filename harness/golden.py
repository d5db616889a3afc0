"""Golden outputs: a fixed, seeded input set and the fault-free outputs of one model on one device.

``diehard golden CKPT_DIR --out golden.pt`` (command line: ``diehardlab.harness.cli_golden``) runs the model
twice and refuses when the two runs differ by more than the threshold (the device is then not deterministic
enough for that threshold, and every iteration in the beam would read as an SDC). The file holds tensors and
plain values only, so it loads with ``torch.load(weights_only=True)``:

    format, version            "diehardlab-golden", 1
    inputs, outputs            float32 (N, C, H, W) and (N, K), on the CPU
    topk, labels, indices      int64 (N, k), (N,) ground truth, (N,) positions in the dataset split
    dataset, split, seed, batch_size, threshold, max_run_difference
    model_hash, checkpoint, model (ModelConfig fields), torch_version, device, device_name, created_utc,
    diehardlab_version, numerics (the arithmetic of every layer: ``diehardlab.hardening.numerics``; ``diehard
    run`` computes in the same one; files without it were made in FP32)
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from diehardlab.harness.device import device_name, pick_device, synchronize
from diehardlab.harness.options import DEFAULT_THRESHOLD, check_threshold

from diehardlab.errors import ConfigError, DataError

FORMAT = "diehardlab-golden"
VERSION = 1
TOPK = 5


def forward_batches(model: torch.nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(x) for x in batches]


def split_batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [t.contiguous() for t in torch.split(x, batch_size)]


def make_golden(
    ckpt_dir: str | Path,
    *,
    dataset: str | None = None,
    split: str = "test",
    samples: int = 32,
    batch_size: int = 32,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    device: str = "auto",
    data_dir: str | None = None,
    numerics: str = "fp32",
) -> dict[str, Any]:
    """Build the golden record (module docstring); ``ConfigError`` when the device is not deterministic."""
    from diehardlab.hardening.checkpoint import load_model
    from diehardlab.hardening.data import fixed_normalisation, load_dataset
    from diehardlab.hardening.numerics import apply_numerics, parse_numerics

    if samples < 1 or batch_size < 1:
        raise ConfigError("--samples and --batch-size must be >= 1")
    check_threshold(threshold, "--threshold")
    policy = parse_numerics(numerics)
    dev = pick_device(device)
    loaded = load_model(ckpt_dir, dev)
    applied = apply_numerics(loaded.model, policy, dev)
    name = dataset or loaded.dataset
    data = load_dataset(name, split, data_dir, fixed_normalisation(loaded.config))
    if data.info.in_channels != loaded.in_channels or data.info.num_classes != loaded.num_classes:
        raise ConfigError(
            f"--dataset {name}: {data.info.in_channels} channels / {data.info.num_classes} classes, but the model "
            f"in {ckpt_dir} takes {loaded.in_channels} / {loaded.num_classes}"
        )
    if samples > len(data):
        raise ConfigError(f"--samples {samples}: the {split} split of {name} has only {len(data)} images")
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(data), generator=gen)[:samples].sort().values
    rec = golden_record(loaded, data.x[indices].contiguous(), data.y[indices].contiguous(), batch_size, threshold, dev)
    rec.update(indices=indices, dataset=name, split=split, seed=seed, numerics=applied.record())
    return rec


def golden_record(
    loaded: Any, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, threshold: float, dev: torch.device
) -> dict[str, Any]:
    """The golden record of ``loaded`` (a ``diehardlab.hardening.checkpoint.LoadedModel``) on these inputs."""
    from diehardlab import __version__

    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    ckpt_dir = loaded.path
    batches = [b.to(dev) for b in split_batches(inputs, batch_size)]
    first = forward_batches(loaded.model, batches)
    synchronize(dev)
    second = forward_batches(loaded.model, batches)
    synchronize(dev)
    out1 = torch.cat(first).float().cpu()
    out2 = torch.cat(second).float().cpu()
    if not bool(torch.isfinite(out1).all()):
        raise ConfigError(f"{ckpt_dir}: the model outputs NaN or Inf on the golden inputs; it cannot be a reference")
    diff = float((out1 - out2).abs().max()) if out1.numel() else 0.0
    if not diff <= threshold:
        raise ConfigError(
            f"device {device_name(dev)} is not deterministic at --threshold {threshold:g}: two fault-free runs "
            f"differ by up to {diff:.3e}. Raise --threshold above that, or make the device deterministic "
            "(torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8)"
        )
    k = min(TOPK, out1.shape[1])
    return {
        "format": FORMAT,
        "version": VERSION,
        "inputs": inputs,
        "outputs": out1,
        "topk": torch.topk(out1, k, dim=1).indices,
        "labels": labels,
        "indices": torch.arange(inputs.shape[0]),
        "dataset": loaded.dataset,
        "split": "",
        "seed": -1,
        "batch_size": batch_size,
        "threshold": float(threshold),
        "max_run_difference": diff,
        "model_hash": loaded.model_hash,
        "checkpoint": str(Path(ckpt_dir).resolve()),
        "model": dict(loaded.config.get("model", {})),
        "torch_version": str(torch.__version__),
        "device": str(dev),
        "device_name": device_name(dev),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "diehardlab_version": __version__,
    }


def save_golden(record: dict[str, Any], out: str | Path) -> Path:
    """Write then rename: a full disk or a crash never leaves a golden file that looks complete."""
    from diehardlab.hardening.checkpoint import save_tensors

    return save_tensors(record, out, "--out")


_REQUIRED = ("inputs", "outputs", "topk", "labels", "model_hash", "batch_size", "threshold")


def _check_fields(rec: dict[str, Any], path: Path) -> None:
    """Every field the runner reads: types, shapes, finite numbers. One line naming the field."""

    def bad(field: str, want: str, got: Any) -> DataError:
        shown = f"tensor {tuple(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor) else repr(got)[:60]
        return DataError(f"{path}: field {field!r} must be {want} (got {shown}); make the golden file again")

    tensors = {"inputs": (4, True), "outputs": (2, True), "topk": (2, False), "labels": (1, False)}
    for field, (ndim, floating) in tensors.items():
        t = rec[field]
        kind = "floating-point" if floating else "integer"
        if not isinstance(t, torch.Tensor) or t.dim() != ndim or t.is_floating_point() != floating:
            raise bad(field, f"a {ndim}-d {kind} tensor", t)
        if floating and not bool(torch.isfinite(t).all()):
            raise bad(field, "finite (no NaN or Inf)", "non-finite values")
    n = rec["inputs"].shape[0]
    if n == 0 or any(rec[k].shape[0] != n for k in ("outputs", "topk", "labels")):
        raise DataError(f"{path}: inputs, outputs, topk and labels disagree on the number of images (or it is 0)")
    bs = rec["batch_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise bad("batch_size", "an integer >= 1", bs)
    thr = rec["threshold"]
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not math.isfinite(thr) or thr < 0:
        raise bad("threshold", "a finite number >= 0", thr)
    if not isinstance(rec["model_hash"], str) or len(rec["model_hash"]) != 64:
        raise bad("model_hash", "the sha256 hex of model.pt", rec["model_hash"])


def load_golden(path: str | Path) -> dict[str, Any]:
    """Read and check a golden file; errors name the file, the field and what to do."""
    from diehardlab.hardening.checkpoint import load_tensor_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such golden file; make one with 'diehard golden CKPT_DIR --out {path}'")
    rec = load_tensor_file(path, "cpu", "golden file")
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise DataError(f"{path}: not a diehardlab golden file (make one with 'diehard golden')")
    if rec.get("version") != VERSION:
        raise DataError(f"{path}: golden format version {rec.get('version')!r}, this diehardlab reads {VERSION}")
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise DataError(f"{path}: golden file lacks {', '.join(missing)}")
    _check_fields(rec, path)
    return rec


def check_golden_matches(rec: dict[str, Any], golden_path: str | Path, model_hash: str, ckpt_dir: str | Path) -> None:
    """Refuse a golden made for another model: its comparison would report every iteration as an SDC."""
    if rec["model_hash"] != model_hash:
        raise ConfigError(
            f"{golden_path} was made for another model (model.pt sha256 {rec['model_hash'][:16]}..., checkpoint "
            f"{rec.get('checkpoint', '?')}), but {Path(ckpt_dir) / 'model.pt'} has sha256 {model_hash[:16]}...; "
            f"make a golden for this checkpoint: diehard golden {ckpt_dir} --out GOLDEN"
        )
